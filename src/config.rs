//! Host configuration: one TOML file plus the environment.
//!
//! Sources, lowest precedence first: built-in defaults, the TOML file
//! (`<home>/talon.toml` or `--config`), a NanoClaw-style `.env` file, and the
//! process environment. Every setting `[section] key` can be overridden by
//! `TALON_<SECTION>_<KEY>`, and the NanoClaw names (`ASSISTANT_NAME`, `TZ`,
//! `CONTAINER_TIMEOUT`, …) are understood so an existing `.env` keeps working.
//! Secrets come only from `.env` or the environment, never from the TOML
//! file, which is more likely to be shared or committed.
//!
//! Every value is checked while it is read, so each error names where the
//! value came from (file or variable), the setting, and what is wrong with it.
//! `config/talon.example.toml` documents every key; a test below keeps it in
//! step with this file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::messages::wire::AgentRuntime;
use crate::paths::Paths;
use crate::secret::Secret;
use crate::trigger::{default_pattern, Trigger};

/// Provider kinds the host can talk to: the Anthropic Messages API, or any
/// OpenAI-compatible chat-completions endpoint (a local proxy, Ollama).
pub const PROVIDER_KINDS: &[&str] = &["anthropic"];

/// Kinds the LIGHT tier may use: an OpenAI-compatible endpoint (the seeds'
/// copilot proxy, Ollama) or a cheaper Anthropic model.
pub const LIGHT_PROVIDER_KINDS: &[&str] = &["openai", "anthropic"];

/// The TOML sections, which are also the `<SECTION>` of `TALON_<SECTION>_<KEY>`.
const SECTIONS: &[&str] = &[
    "assistant",
    "queue",
    "container",
    "provider",
    "router",
    "terminal",
    "channels",
    "web",
    "limits",
    "auth",
    "log",
    "agent",
];

/// NanoClaw `.env` names and the settings they set.
const NANOCLAW_VARS: &[(&str, &str, &str)] = &[
    ("ASSISTANT_NAME", "assistant", "name"),
    ("TRIGGER_PATTERN", "assistant", "trigger"),
    ("TZ", "assistant", "timezone"),
    ("ANTHROPIC_BASE_URL", "provider", "base_url"),
    ("ANTHROPIC_MODEL", "provider", "model"),
    ("COPILOT_API_URL", "provider", "light_base_url"),
    ("COPILOT_MODEL", "provider", "light_model"),
    (
        "MAX_CONCURRENT_CONTAINERS",
        "queue",
        "max_concurrent_containers",
    ),
    ("CONTAINER_TIMEOUT", "container", "timeout"),
    ("IDLE_TIMEOUT", "container", "idle_timeout"),
];

/// NanoClaw gives these two as plain milliseconds.
const MILLISECOND_VARS: &[&str] = &["CONTAINER_TIMEOUT", "IDLE_TIMEOUT"];

/// Secret variables, read only from `.env` and the environment.
const SECRET_VARS: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_API_KEY_FALLBACK",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "DISCORD_BOT_TOKEN",
    "COPILOT_API_KEY",
];

/// Docker refuses memory limits below 6 MB.
const MIN_MEMORY_MB: u64 = 6;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub assistant: AssistantConfig,
    pub queue: QueueConfig,
    pub container: ContainerDefaults,
    pub provider: ProviderConfig,
    pub router: RouterConfig,
    pub terminal: TerminalConfig,
    pub channels: ChannelsConfig,
    pub web: WebConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub agent: AgentConfig,
    pub secrets: Secrets,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AssistantConfig {
    pub name: String,
    /// A regex; `None` means `^@<name>\b` (see [`Config::trigger_pattern`]).
    pub trigger: Option<String>,
    /// An IANA name, validated; see [`Config::tz`].
    pub timezone: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    pub max_concurrent_containers: usize,
    pub max_messages_per_prompt: usize,
    pub max_retries: u32,
    /// Retry n waits `retry_base · 2^(n-1)`.
    pub retry_base: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerDefaults {
    pub image: String,
    pub idle_timeout: Duration,
    /// The hard timeout (before the `idle_timeout + close_grace` floor is applied).
    pub timeout: Duration,
    /// How long the graceful close gets before the hard kill can fire:
    /// the hard timeout is never less than `idle_timeout + close_grace`.
    pub close_grace: Duration,
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids_limit: i64,
    pub tmpfs_mb: u64,
    pub max_output_bytes: u64,
    /// `"uid:gid"` for containers when the host runs as root; never 0.
    pub run_as: Option<String>,
    /// The mount allowlist file; default `~/.config/talon/mount-allowlist.json`.
    pub mount_allowlist: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// One of [`PROVIDER_KINDS`].
    pub kind: String,
    pub model: String,
    pub max_tokens: u32,
    pub base_url: Option<String>,
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub retry_base: Duration,
    pub max_retry_delay: Duration,
    /// A provider that cannot be reached is retried this long, then the
    /// chat is told and queues pause until a probe gets an answer.
    pub unreachable_after: Duration,
    pub probe_interval: Duration,
    /// The LIGHT tier's kind, one of [`LIGHT_PROVIDER_KINDS`].
    pub light_kind: String,
    /// The LIGHT tier exists only when this is set.
    pub light_model: Option<String>,
    /// Required for an `openai` LIGHT tier; an `anthropic` one shares `base_url`.
    pub light_base_url: Option<String>,
    /// The variable (environment or `.env`) holding the LIGHT tier's key;
    /// the key itself is never a setting.
    pub light_api_key_env: String,
}

/// The tier router (spec §7): which batches go to the LIGHT tier.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    pub enabled: bool,
    /// A batch with fewer characters than this goes LIGHT (unless a keyword
    /// says HEAVY); 0 turns the length rule off.
    pub light_max_chars: usize,
    /// Lower-cased words; a batch containing one goes HEAVY.
    pub heavy_keywords: Vec<String>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            enabled: false,
            light_max_chars: 120,
            heavy_keywords: [
                "code", "debug", "analyze", "analyse", "review", "plan", "research",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TerminalConfig {
    pub user_name: String,
}

/// Channel settings. Slack and Discord start when their tokens are set
/// (see [`Secrets`]); the socket channel when switched on here.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChannelsConfig {
    /// The local socket channel (`<home>/data/talon.sock`) for scripts and
    /// bridges; off unless asked for.
    pub socket: bool,
    /// Slack's Web API root (default `https://slack.com/api/`), for a proxy
    /// or a test double.
    pub slack_api_url: Option<String>,
    /// Discord's origin (default `https://discord.com`; the REST API is
    /// under `/api/v10`), for a proxy or a test double.
    pub discord_api_url: Option<String>,
}

/// The host's web fetch on the agent's behalf (SPEC §6).
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    /// Lets the agent fetch from loopback addresses (tests, local services).
    /// Private, link-local and other internal addresses stay refused.
    pub allow_loopback: bool,
    /// Time limit for one fetch, redirects included.
    pub timeout: Duration,
    /// Cap on a fetched body; a request may only ask for less.
    pub max_bytes: u64,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            allow_loopback: false,
            timeout: Duration::from_secs(20),
            max_bytes: 1_000_000,
        }
    }
}

/// What one container may make the host do (SPEC §8, containment): the
/// host enforces these whatever the runner says.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Requests (model calls, host actions) one container may have in
    /// flight; more wait, unread, in the container's own pipe.
    pub max_inflight_per_container: usize,
    /// Requests in flight across all containers.
    pub max_inflight: usize,
    pub max_model_calls_per_run: u64,
    /// Input plus output tokens over one container run.
    pub max_tokens_per_run: u64,
    /// Host actions (messages, tasks, web fetches) one container may ask
    /// for a minute, sustained; a minute's worth may come at once.
    pub host_actions_per_minute: u32,
    /// The largest prompt sent into a container, JSON-encoded: older
    /// messages of a bigger batch are left out, with a note.
    pub max_prompt_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_inflight_per_container: 4,
            max_inflight: 32,
            max_model_calls_per_run: 200,
            max_tokens_per_run: 10_000_000,
            host_actions_per_minute: 60,
            max_prompt_bytes: 2_097_152,
        }
    }
}

/// Where the token manager finds and refreshes credentials (SPEC §9).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    /// The Claude CLI's credentials file; `None`: `~/.claude/.credentials.json`.
    pub credentials_file: Option<String>,
    pub token_url: String,
    pub client_id: String,
    pub scope: String,
    /// The Threads Graph API's base URL.
    pub threads_url: String,
    /// First wait after a failed refresh; doubled per failure, 10 min at most.
    pub refresh_retry_base: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            credentials_file: None,
            token_url: crate::auth::claude::DEFAULT_TOKEN_URL.into(),
            client_id: crate::auth::claude::DEFAULT_CLIENT_ID.into(),
            scope: crate::auth::claude::DEFAULT_SCOPE.into(),
            threads_url: "https://graph.threads.net".into(),
            refresh_retry_base: Duration::from_secs(30),
        }
    }
}

/// Which agent runs a group's turns (issue: Claude Code as the agent).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// `talon` (the built-in runner) or `claude-code` (the real CLI, its
    /// API calls carried to the host's credential proxy); a group may
    /// choose its own (`talon groups set <chat> --runtime …`).
    pub runtime: AgentRuntime,
    /// The image Claude Code groups run in.
    pub claude_image: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            runtime: AgentRuntime::Talon,
            claude_image: "talon-agent-claude:latest".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, or `info,talon=debug`.
    pub level: String,
}

/// `Debug` shows only which secrets are set: [`Secret`] redacts its value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Secrets {
    pub anthropic_api_key: Option<Secret>,
    pub claude_oauth_token: Option<Secret>,
    pub anthropic_api_key_fallback: Option<Secret>,
    pub slack_bot_token: Option<Secret>,
    pub slack_app_token: Option<Secret>,
    pub discord_bot_token: Option<Secret>,
    /// The LIGHT tier's key, from the variable named by
    /// `provider.light_api_key_env` (default `COPILOT_API_KEY`).
    pub light_api_key: Option<Secret>,
}

impl Default for AssistantConfig {
    fn default() -> Self {
        AssistantConfig {
            name: "Talon".into(),
            trigger: None,
            timezone: "UTC".into(),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_concurrent_containers: 5,
            max_messages_per_prompt: 10,
            max_retries: 5,
            retry_base: Duration::from_secs(5),
        }
    }
}

impl Default for ContainerDefaults {
    fn default() -> Self {
        ContainerDefaults {
            image: "talon-agent:latest".into(),
            idle_timeout: Duration::from_secs(30 * 60),
            timeout: Duration::from_secs(30 * 60),
            close_grace: Duration::from_secs(30),
            memory_mb: 1024,
            cpus: 1.0,
            pids_limit: 256,
            tmpfs_mb: 64,
            max_output_bytes: 10 * 1024 * 1024,
            run_as: None,
            mount_allowlist: None,
        }
    }
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            kind: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            max_tokens: 4096,
            base_url: None,
            request_timeout: Duration::from_secs(120),
            max_retries: 3,
            retry_base: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(60),
            unreachable_after: Duration::from_secs(20),
            probe_interval: Duration::from_secs(10),
            light_kind: "openai".into(),
            light_model: None,
            light_base_url: None,
            light_api_key_env: "COPILOT_API_KEY".into(),
        }
    }
}

impl Default for TerminalConfig {
    /// `$USER` of this process, else `"you"`.
    fn default() -> Self {
        TerminalConfig {
            user_name: default_user_name(std::env::var("USER").ok()),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

impl Default for Config {
    /// The built-in defaults, ignoring files and environment.
    fn default() -> Self {
        Config {
            assistant: AssistantConfig::default(),
            queue: QueueConfig::default(),
            container: ContainerDefaults::default(),
            provider: ProviderConfig::default(),
            router: RouterConfig::default(),
            terminal: TerminalConfig::default(),
            channels: ChannelsConfig::default(),
            web: WebConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            agent: AgentConfig::default(),
            secrets: Secrets::default(),
        }
    }
}

fn default_user_name(user: Option<String>) -> String {
    user.map(|user| user.trim().to_string())
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| "you".into())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {file}: invalid TOML: {message}")]
    Syntax { file: String, message: String },
    #[error("config file {file}: unknown section [{section}] (known: {})", SECTIONS.join(", "))]
    UnknownSection { file: String, section: String },
    #[error("{origin}: unknown setting `{key}`")]
    UnknownKey { origin: String, key: String },
    #[error("config file {file}: `{key}` is a secret; secrets are read only from the environment or .env, never from the config file: set {env_var} there")]
    SecretInFile {
        file: String,
        key: String,
        env_var: String,
    },
    #[error("{origin}: `{key}` {problem}")]
    Invalid {
        origin: String,
        key: String,
        problem: String,
    },
}

impl Config {
    /// Reads `explicit` (must exist) or else `paths.config_file()` (optional),
    /// then `paths.env_file()` (optional, NanoClaw-style `KEY=VALUE`), then
    /// the process environment.
    pub fn load(paths: &Paths, explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let config_path = explicit.map_or_else(|| paths.config_file(), Path::to_path_buf);
        let toml_text = read_optional(&config_path, explicit.is_some())?;
        let env_path = paths.env_file();
        let dotenv = read_optional(&env_path, false)?
            .map(|text| parse_dotenv(&text))
            .unwrap_or_default();
        // Variables that are not UTF-8 cannot be talon settings; skip them.
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        build(
            toml_text.as_deref(),
            &config_path.display().to_string(),
            &dotenv,
            &env_path.display().to_string(),
            &env,
        )
    }

    /// The pure core of [`Config::load`]: TOML text (`None` = no file), `.env`
    /// pairs, process environment pairs. Precedence: process env > .env >
    /// TOML > defaults.
    pub fn from_sources(
        toml_text: Option<&str>,
        file_label: &str,
        dotenv: &[(String, String)],
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        build(toml_text, file_label, dotenv, ".env", env)
    }

    /// The configured trigger regex, else `^@<name>\b`.
    pub fn trigger_pattern(&self) -> String {
        self.assistant
            .trigger
            .clone()
            .unwrap_or_else(|| default_pattern(&self.assistant.name))
    }

    /// The configured timezone. It was validated on load; UTC covers a
    /// hand-built `Config` with a bad name.
    pub fn tz(&self) -> chrono_tz::Tz {
        self.assistant
            .timezone
            .parse()
            .unwrap_or(chrono_tz::Tz::UTC)
    }
}

fn read_optional(path: &Path, must_exist: bool) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !must_exist => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses a NanoClaw-style `.env`: `KEY=VALUE` lines, `#` comments (also
/// after an unquoted value, when preceded by whitespace), an optional
/// `export ` prefix, and single or double quotes stripped (double quotes
/// understand `\"`, `\\` and `\n`). Lines that are not assignments are skipped.
pub fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, raw_value)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if !is_variable_name(name) {
            continue;
        }
        pairs.push((name.to_string(), dotenv_value(raw_value)));
    }
    pairs
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn dotenv_value(raw: &str) -> String {
    let value = raw.trim();
    if let Some(inner) = value.strip_prefix('"') {
        if let Some(unescaped) = double_quoted(inner) {
            return unescaped;
        }
    } else if let Some(inner) = value.strip_prefix('\'') {
        if let Some(end) = inner.find('\'') {
            return inner[..end].to_string();
        }
    }
    // Unquoted: `#` after whitespace starts a comment (`TZ=Asia/Seoul  # note`),
    // but a `#` inside a value (`abc#def`) is kept.
    let mut end = raw.len();
    let mut previous_is_space = true;
    for (index, c) in raw.char_indices() {
        if c == '#' && previous_is_space && index > 0 {
            end = index;
            break;
        }
        previous_is_space = c.is_whitespace();
    }
    raw[..end].trim().to_string()
}

/// The contents of a double-quoted value up to its closing quote, unescaped;
/// `None` if the quote never closes (the value is then taken literally).
fn double_quoted(inner: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                other @ ('"' | '\\') => out.push(other),
                other => {
                    out.push('\\');
                    out.push(other);
                }
            },
            other => out.push(other),
        }
    }
    None
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone)]
enum Origin {
    File(String),
    Variable { name: String, file: Option<String> },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(label) => write!(f, "config file {label}"),
            Origin::Variable { name, file: None } => write!(f, "environment variable {name}"),
            Origin::Variable {
                name,
                file: Some(file),
            } => write!(f, "{name} in {file}"),
        }
    }
}

#[derive(Debug, Clone)]
enum Raw {
    Toml(toml::Value),
    Text(String),
}

#[derive(Debug, Clone)]
struct Setting {
    raw: Raw,
    origin: Origin,
}

/// Settings from all sources, merged by precedence. Readers take each known
/// key out, so whatever is left at the end is unknown.
#[derive(Debug, Default)]
struct Sources {
    settings: BTreeMap<(String, String), Setting>,
    /// Every key the reader asked for, in order (the schema, for tests).
    asked: Vec<(&'static str, &'static str)>,
}

impl Sources {
    fn add_toml(&mut self, text: &str, file: &str) -> Result<(), ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            file: file.to_string(),
            message: err.to_string().trim_end().to_string(),
        })?;
        for (section, value) in table {
            if let Some(env_var) = secret_variable(&section) {
                return Err(secret_in_file(file, &section, env_var));
            }
            if section == "secrets" {
                return Err(secret_in_file(
                    file,
                    "[secrets]",
                    "ANTHROPIC_API_KEY and the like",
                ));
            }
            if !SECTIONS.contains(&section.as_str()) {
                return Err(ConfigError::UnknownSection {
                    file: file.to_string(),
                    section,
                });
            }
            let toml::Value::Table(keys) = value else {
                return Err(ConfigError::Invalid {
                    origin: Origin::File(file.to_string()).to_string(),
                    key: section,
                    problem: "must be a section ([name] followed by key = value lines)".into(),
                });
            };
            for (key, value) in keys {
                if let Some(env_var) = secret_variable(&key) {
                    return Err(secret_in_file(file, &format!("{section}.{key}"), env_var));
                }
                self.settings.insert(
                    (section.clone(), key),
                    Setting {
                        raw: Raw::Toml(value),
                        origin: Origin::File(file.to_string()),
                    },
                );
            }
        }
        Ok(())
    }

    /// Overlays environment-style variables. NanoClaw names go first so the
    /// more specific `TALON_*` name wins when one source sets both.
    /// Empty values count as unset, so `FOO=` never blanks a lower layer.
    fn add_variables(&mut self, vars: &[(String, String)], file: Option<&str>) {
        let origin = |name: &str| Origin::Variable {
            name: name.to_string(),
            file: file.map(str::to_string),
        };
        for (name, value) in vars {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            let Some((_, section, key)) = NANOCLAW_VARS
                .iter()
                .find(|(var, _, _)| *var == name.as_str())
            else {
                continue;
            };
            let value = if MILLISECOND_VARS.contains(&name.as_str())
                && value.bytes().all(|b| b.is_ascii_digit())
            {
                format!("{value}ms")
            } else {
                value.to_string()
            };
            self.set(section, key, value, origin(name));
        }
        for (name, value) in vars {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            // Only TALON_<known section>_… is configuration; other TALON_
            // variables (TALON_HOME, …) belong to the command line, and
            // TALON_AGENT_RUNNER to the image builder.
            if name == crate::image::RUNNER_ENV {
                continue;
            }
            let Some((section, key)) = name
                .strip_prefix("TALON_")
                .and_then(|rest| rest.split_once('_'))
                .map(|(section, key)| (section.to_ascii_lowercase(), key.to_ascii_lowercase()))
                .filter(|(section, key)| SECTIONS.contains(&section.as_str()) && !key.is_empty())
            else {
                continue;
            };
            self.set(&section, &key, value.to_string(), origin(name));
        }
    }

    fn set(&mut self, section: &str, key: &str, value: String, origin: Origin) {
        self.settings.insert(
            (section.to_string(), key.to_string()),
            Setting {
                raw: Raw::Text(value),
                origin,
            },
        );
    }

    /// Takes `section.key` and parses it, or returns `default` when unset.
    fn get<T>(
        &mut self,
        section: &'static str,
        key: &'static str,
        default: T,
        parse: impl FnOnce(&Raw) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.asked.push((section, key));
        let Some(setting) = self
            .settings
            .remove(&(section.to_string(), key.to_string()))
        else {
            return Ok(default);
        };
        parse(&setting.raw).map_err(|problem| ConfigError::Invalid {
            origin: setting.origin.to_string(),
            key: format!("{section}.{key}"),
            problem,
        })
    }

    /// Anything not taken by a reader is a typo or a removed setting.
    fn reject_leftovers(self) -> Result<(), ConfigError> {
        match self.settings.into_iter().next() {
            None => Ok(()),
            Some(((section, key), setting)) => Err(ConfigError::UnknownKey {
                origin: setting.origin.to_string(),
                key: format!("{section}.{key}"),
            }),
        }
    }
}

fn secret_variable(key: &str) -> Option<&'static str> {
    let upper = key.to_ascii_uppercase();
    if upper == "CLAUDE_OAUTH_TOKEN" {
        return Some("CLAUDE_CODE_OAUTH_TOKEN");
    }
    SECRET_VARS.iter().copied().find(|var| *var == upper)
}

fn secret_in_file(file: &str, key: &str, env_var: &str) -> ConfigError {
    ConfigError::SecretInFile {
        file: file.to_string(),
        key: key.to_string(),
        env_var: env_var.to_string(),
    }
}

fn build(
    toml_text: Option<&str>,
    file_label: &str,
    dotenv: &[(String, String)],
    dotenv_label: &str,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut sources = Sources::default();
    if let Some(text) = toml_text {
        sources.add_toml(text, file_label)?;
    }
    sources.add_variables(dotenv, Some(dotenv_label));
    sources.add_variables(env, None);
    let user = env
        .iter()
        .find(|(name, _)| name == "USER")
        .map(|(_, value)| value.clone());
    let mut config = read_settings(&mut sources, default_user_name(user))?;
    sources.reject_leftovers()?;
    config.secrets = read_secrets(dotenv, env, &config.provider.light_api_key_env);
    Ok(config)
}

fn read_secrets(
    dotenv: &[(String, String)],
    env: &[(String, String)],
    light_api_key_env: &str,
) -> Secrets {
    // Process env first: it wins over .env. Empty values count as absent.
    let find = |name: &str| {
        env.iter()
            .chain(dotenv)
            .filter(|(var, _)| var == name)
            .map(|(_, value)| value.trim())
            .find(|value| !value.is_empty())
            .map(Secret::new)
    };
    Secrets {
        anthropic_api_key: find("ANTHROPIC_API_KEY"),
        claude_oauth_token: find("CLAUDE_CODE_OAUTH_TOKEN"),
        anthropic_api_key_fallback: find("ANTHROPIC_API_KEY_FALLBACK"),
        slack_bot_token: find("SLACK_BOT_TOKEN"),
        slack_app_token: find("SLACK_APP_TOKEN"),
        discord_bot_token: find("DISCORD_BOT_TOKEN"),
        light_api_key: find(light_api_key_env),
    }
}

/// Reads every setting. The order of `get` calls here is the schema.
fn read_settings(s: &mut Sources, default_user: String) -> Result<Config, ConfigError> {
    let defaults = Config::default();
    let assistant = AssistantConfig {
        name: s.get("assistant", "name", defaults.assistant.name, non_empty_text)?,
        trigger: s.get("assistant", "trigger", None, trigger_regex)?,
        timezone: s.get(
            "assistant",
            "timezone",
            defaults.assistant.timezone,
            timezone,
        )?,
    };
    let q = defaults.queue;
    let queue = QueueConfig {
        max_concurrent_containers: s.get(
            "queue",
            "max_concurrent_containers",
            q.max_concurrent_containers,
            |raw| at_least(raw, 1),
        )?,
        max_messages_per_prompt: s.get(
            "queue",
            "max_messages_per_prompt",
            q.max_messages_per_prompt,
            |raw| at_least(raw, 1),
        )?,
        max_retries: s.get("queue", "max_retries", q.max_retries, |raw| {
            at_least(raw, 0)
        })?,
        retry_base: s.get("queue", "retry_base", q.retry_base, positive_duration)?,
    };
    let c = defaults.container;
    let container = ContainerDefaults {
        image: s.get("container", "image", c.image, non_empty_text)?,
        idle_timeout: s.get(
            "container",
            "idle_timeout",
            c.idle_timeout,
            positive_duration,
        )?,
        timeout: s.get("container", "timeout", c.timeout, positive_duration)?,
        close_grace: s.get("container", "close_grace", c.close_grace, positive_duration)?,
        memory_mb: s.get("container", "memory_mb", c.memory_mb, |raw| {
            at_least(raw, MIN_MEMORY_MB)
        })?,
        cpus: s.get("container", "cpus", c.cpus, positive_float)?,
        pids_limit: s.get("container", "pids_limit", c.pids_limit, |raw| {
            at_least(raw, 1)
        })?,
        tmpfs_mb: s.get("container", "tmpfs_mb", c.tmpfs_mb, |raw| at_least(raw, 1))?,
        max_output_bytes: s.get("container", "max_output_bytes", c.max_output_bytes, |raw| {
            at_least(raw, 1)
        })?,
        run_as: s.get("container", "run_as", c.run_as, run_as)?,
        mount_allowlist: s.get(
            "container",
            "mount_allowlist",
            c.mount_allowlist,
            optional_text,
        )?,
    };
    let p = defaults.provider;
    let provider = ProviderConfig {
        kind: s.get("provider", "kind", p.kind, provider_kind)?,
        model: s.get("provider", "model", p.model, non_empty_text)?,
        max_tokens: s.get("provider", "max_tokens", p.max_tokens, |raw| {
            at_least(raw, 1)
        })?,
        base_url: s.get("provider", "base_url", p.base_url, api_base_url)?,
        request_timeout: s.get(
            "provider",
            "request_timeout",
            p.request_timeout,
            positive_duration,
        )?,
        max_retries: s.get("provider", "max_retries", p.max_retries, |raw| {
            at_least(raw, 0)
        })?,
        retry_base: s.get("provider", "retry_base", p.retry_base, positive_duration)?,
        max_retry_delay: s.get(
            "provider",
            "max_retry_delay",
            p.max_retry_delay,
            positive_duration,
        )?,
        unreachable_after: s.get(
            "provider",
            "unreachable_after",
            p.unreachable_after,
            positive_duration,
        )?,
        probe_interval: s.get(
            "provider",
            "probe_interval",
            p.probe_interval,
            positive_duration,
        )?,
        light_kind: s.get("provider", "light_kind", p.light_kind, light_provider_kind)?,
        light_model: s.get("provider", "light_model", p.light_model, optional_text)?,
        light_base_url: s.get("provider", "light_base_url", p.light_base_url, api_base_url)?,
        light_api_key_env: s.get(
            "provider",
            "light_api_key_env",
            p.light_api_key_env,
            variable_name,
        )?,
    };
    let r = defaults.router;
    let router = RouterConfig {
        enabled: s.get("router", "enabled", r.enabled, boolean)?,
        light_max_chars: s.get("router", "light_max_chars", r.light_max_chars, |raw| {
            at_least(raw, 0)
        })?,
        heavy_keywords: s.get("router", "heavy_keywords", r.heavy_keywords, word_list)?,
    };
    let terminal = TerminalConfig {
        user_name: s.get("terminal", "user_name", default_user, non_empty_text)?,
    };
    let c = defaults.channels;
    let channels = ChannelsConfig {
        socket: s.get("channels", "socket", c.socket, boolean)?,
        slack_api_url: s.get("channels", "slack_api_url", c.slack_api_url, base_url)?,
        discord_api_url: s.get("channels", "discord_api_url", c.discord_api_url, base_url)?,
    };
    let w = defaults.web;
    let web = WebConfig {
        allow_loopback: s.get("web", "allow_loopback", w.allow_loopback, boolean)?,
        timeout: s.get("web", "timeout", w.timeout, positive_duration)?,
        max_bytes: s.get("web", "max_bytes", w.max_bytes, |raw| at_least(raw, 1))?,
    };
    let l = defaults.limits;
    let limits = LimitsConfig {
        max_inflight_per_container: s.get(
            "limits",
            "max_inflight_per_container",
            l.max_inflight_per_container,
            |raw| at_least(raw, 1),
        )?,
        max_inflight: s.get("limits", "max_inflight", l.max_inflight, |raw| {
            at_least(raw, 1)
        })?,
        max_model_calls_per_run: s.get(
            "limits",
            "max_model_calls_per_run",
            l.max_model_calls_per_run,
            |raw| at_least(raw, 1),
        )?,
        max_tokens_per_run: s.get(
            "limits",
            "max_tokens_per_run",
            l.max_tokens_per_run,
            |raw| at_least(raw, 1),
        )?,
        host_actions_per_minute: s.get(
            "limits",
            "host_actions_per_minute",
            l.host_actions_per_minute,
            |raw| at_least(raw, 1),
        )?,
        max_prompt_bytes: s.get("limits", "max_prompt_bytes", l.max_prompt_bytes, |raw| {
            at_least(raw, 4096)
        })?,
    };
    let a = defaults.auth;
    let auth = AuthConfig {
        credentials_file: s.get(
            "auth",
            "credentials_file",
            a.credentials_file,
            optional_text,
        )?,
        token_url: s.get("auth", "token_url", a.token_url, non_empty_text)?,
        client_id: s.get("auth", "client_id", a.client_id, non_empty_text)?,
        scope: s.get("auth", "scope", a.scope, non_empty_text)?,
        threads_url: s.get("auth", "threads_url", a.threads_url, non_empty_text)?,
        refresh_retry_base: s.get(
            "auth",
            "refresh_retry_base",
            a.refresh_retry_base,
            positive_duration,
        )?,
    };
    let log = LogConfig {
        level: s.get("log", "level", defaults.log.level, log_filter)?,
    };
    let agent = AgentConfig {
        runtime: s.get("agent", "runtime", defaults.agent.runtime, agent_runtime)?,
        claude_image: s.get(
            "agent",
            "claude_image",
            defaults.agent.claude_image,
            non_empty_text,
        )?,
    };
    Ok(Config {
        assistant,
        queue,
        container,
        provider,
        router,
        terminal,
        channels,
        web,
        limits,
        auth,
        log,
        agent,
        secrets: Secrets::default(),
    })
}

fn agent_runtime(raw: &Raw) -> Result<AgentRuntime, String> {
    text(raw)?.parse()
}

// Value parsers: each returns the problem as a phrase that follows "`key` ".

fn text(raw: &Raw) -> Result<String, String> {
    match raw {
        Raw::Text(value) | Raw::Toml(toml::Value::String(value)) => Ok(value.trim().to_string()),
        Raw::Toml(other) => Err(format!("must be a string, not a {}", other.type_str())),
    }
}

fn non_empty_text(raw: &Raw) -> Result<String, String> {
    let value = text(raw)?;
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(value)
}

/// An empty string means "not set", for settings that are optional.
fn optional_text(raw: &Raw) -> Result<Option<String>, String> {
    Ok(Some(text(raw)?).filter(|value| !value.is_empty()))
}

fn trigger_regex(raw: &Raw) -> Result<Option<String>, String> {
    let pattern = optional_text(raw)?;
    if let Some(pattern) = &pattern {
        Trigger::new(pattern)
            .map_err(|err| format!("= {pattern:?} is not a valid regex: {err}"))?;
    }
    Ok(pattern)
}

fn timezone(raw: &Raw) -> Result<String, String> {
    let value = non_empty_text(raw)?;
    // POSIX allows `TZ=:Area/City`.
    let name = value.strip_prefix(':').unwrap_or(&value);
    match name.parse::<chrono_tz::Tz>() {
        Ok(tz) => Ok(tz.name().to_string()),
        Err(_) => Err(format!(
            "= {value:?} is not an IANA timezone name such as \"UTC\" or \"Asia/Seoul\""
        )),
    }
}

fn at_least<T>(raw: &Raw, min: T) -> Result<T, String>
where
    T: TryFrom<i64> + std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let value: T = match raw {
        Raw::Toml(toml::Value::Integer(number)) => {
            T::try_from(*number).map_err(|_| format!("= {number} is out of range"))?
        }
        Raw::Text(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("must be a whole number, not {value:?}"))?,
        Raw::Toml(other) => {
            return Err(format!(
                "must be a whole number, not a {}",
                other.type_str()
            ))
        }
    };
    if value < min {
        return Err(format!("must be at least {min}, not {value}"));
    }
    Ok(value)
}

/// A TOML boolean, or in a variable `true`/`false` (also `1`/`0`, `yes`/`no`,
/// `on`/`off`, any case), as shells and `.env` files write them.
fn boolean(raw: &Raw) -> Result<bool, String> {
    match raw {
        Raw::Toml(toml::Value::Boolean(value)) => Ok(*value),
        Raw::Text(value) => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(format!("must be true or false, not {value:?}")),
        },
        Raw::Toml(other) => Err(format!("must be true or false, not a {}", other.type_str())),
    }
}

fn positive_float(raw: &Raw) -> Result<f64, String> {
    let value = match raw {
        Raw::Toml(toml::Value::Float(number)) => *number,
        Raw::Toml(toml::Value::Integer(number)) => *number as f64,
        Raw::Text(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("must be a number, not {value:?}"))?,
        Raw::Toml(other) => return Err(format!("must be a number, not a {}", other.type_str())),
    };
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("must be a number above 0, not {value}"));
    }
    Ok(value)
}

fn positive_duration(raw: &Raw) -> Result<Duration, String> {
    let value = match raw {
        Raw::Text(value) | Raw::Toml(toml::Value::String(value)) => value.trim(),
        Raw::Toml(toml::Value::Integer(number)) => {
            return Err(format!(
                "must be a duration with a unit, such as \"{number}s\" or \"{number}ms\", not a bare number"
            ))
        }
        Raw::Toml(other) => return Err(format!("must be a duration such as \"30m\", not a {}", other.type_str())),
    };
    let duration = humantime::parse_duration(value).map_err(|err| {
        format!("must be a duration such as \"30m\", \"2s\" or \"150ms\", not {value:?} ({err})")
    })?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

fn run_as(raw: &Raw) -> Result<Option<String>, String> {
    let Some(value) = optional_text(raw)? else {
        return Ok(None);
    };
    let ids = value
        .split_once(':')
        .and_then(|(uid, gid)| Some((uid.parse::<u32>().ok()?, gid.parse::<u32>().ok()?)));
    match ids {
        None => Err(format!("must be \"uid:gid\" with numeric ids, such as \"1000:1000\", not {value:?}")),
        Some((0, _) | (_, 0)) => Err(format!(
            "= {value:?} would run containers as root; use an unprivileged uid:gid such as \"1000:1000\""
        )),
        Some(_) => Ok(Some(value)),
    }
}

fn provider_kind(raw: &Raw) -> Result<String, String> {
    let value = non_empty_text(raw)?.to_ascii_lowercase();
    if !PROVIDER_KINDS.contains(&value.as_str()) {
        return Err(format!(
            "= {value:?} is not one of {}",
            PROVIDER_KINDS.join(", ")
        ));
    }
    Ok(value)
}

fn light_provider_kind(raw: &Raw) -> Result<String, String> {
    let value = non_empty_text(raw)?.to_ascii_lowercase();
    if !LIGHT_PROVIDER_KINDS.contains(&value.as_str()) {
        return Err(format!(
            "= {value:?} is not one of {}",
            LIGHT_PROVIDER_KINDS.join(", ")
        ));
    }
    Ok(value)
}

/// The name of an environment variable, such as `COPILOT_API_KEY`.
fn variable_name(raw: &Raw) -> Result<String, String> {
    let value = non_empty_text(raw)?;
    let mut chars = value.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "must be an environment variable name such as \"COPILOT_API_KEY\", not {value:?}"
        ));
    }
    Ok(value)
}

/// A TOML array of strings, or in a variable a comma-separated list; words
/// are trimmed and lower-cased, empty ones dropped.
fn word_list(raw: &Raw) -> Result<Vec<String>, String> {
    let words: Vec<String> = match raw {
        Raw::Text(value) => value.split(',').map(str::to_string).collect(),
        Raw::Toml(toml::Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(word) => Ok(word.clone()),
                other => Err(format!(
                    "must be a list of strings, but has a {}",
                    other.type_str()
                )),
            })
            .collect::<Result<_, _>>()?,
        Raw::Toml(other) => {
            return Err(format!(
                "must be a list of strings such as [\"code\", \"debug\"], not a {}",
                other.type_str()
            ))
        }
    };
    Ok(words
        .iter()
        .map(|word| word.trim().to_lowercase())
        .filter(|word| !word.is_empty())
        .collect())
}

/// An http(s) URL a client joins its own paths onto: it must parse, name a
/// host, have a valid port if one is written, and carry no query or
/// fragment. Checked here so a typo fails at start-up with the setting's
/// name, instead of as a hang or a bare 404 on the first request.
fn base_url(raw: &Raw) -> Result<Option<String>, String> {
    let Some(text) = optional_text(raw)? else {
        return Ok(None);
    };
    check_base_url(&text)?;
    Ok(Some(text))
}

/// A model API base URL: the provider appends `/v1/...` itself, so a
/// trailing `/v1` (how many tools document the base URL) is dropped
/// rather than doubled.
fn api_base_url(raw: &Raw) -> Result<Option<String>, String> {
    let Some(text) = base_url(raw)? else {
        return Ok(None);
    };
    let ends_in_v1 = reqwest::Url::parse(&text)
        .is_ok_and(|url| url.path().trim_end_matches('/').ends_with("/v1"));
    let trimmed = text.trim_end_matches('/');
    Ok(Some(match trimmed.strip_suffix("/v1") {
        Some(base) if ends_in_v1 => base.to_string(),
        _ => text,
    }))
}

fn check_base_url(text: &str) -> Result<(), String> {
    const EXAMPLE: &str = "such as \"https://proxy.example:8443\"";
    const EMPTY_PORT: &str =
        "has an empty port after ':'; write the port (e.g. :8080) or drop the ':'";
    let lower = text.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(format!("must start with http:// or https://, not {text:?}"));
    }
    // Host and port are checked as written: the URL parser takes `host:`
    // as "no port", which is almost always a port left out by mistake.
    let (host, port) = written_authority(text);
    if host.is_empty() {
        return Err(format!("= {text:?} has no host; write a URL {EXAMPLE}"));
    }
    match port {
        Some("") => return Err(format!("= {text:?} {EMPTY_PORT}")),
        Some(port) if !port.parse::<u16>().is_ok_and(|port| port > 0) => {
            return Err(format!(
                "= {text:?} has an invalid port {port:?} (a number from 1 to 65535)"
            ))
        }
        _ => {}
    }
    let url = reqwest::Url::parse(text)
        .map_err(|err| format!("= {text:?} is not a valid URL ({err}); write one {EXAMPLE}"))?;
    if url.query().is_some() {
        return Err(format!(
            "= {text:?} must not have a query (?...): paths are added to it"
        ));
    }
    if url.fragment().is_some() {
        return Err(format!("= {text:?} must not have a fragment (#...)"));
    }
    Ok(())
}

/// Host and port as written in `scheme://[user@]host[:port]/...`.
fn written_authority(text: &str) -> (&str, Option<&str>) {
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    // An IPv6 host is bracketed and full of colons.
    let (host, after_host) = match host_port.find(']') {
        Some(end) if host_port.starts_with('[') => host_port.split_at(end + 1),
        _ => match host_port.find(':') {
            Some(colon) => host_port.split_at(colon),
            None => (host_port, ""),
        },
    };
    (host, after_host.strip_prefix(':'))
}

fn log_filter(raw: &Raw) -> Result<String, String> {
    let value = non_empty_text(raw)?;
    tracing_subscriber::EnvFilter::try_new(&value).map_err(|err| {
        format!("= {value:?} is not a log filter such as \"info\" or \"info,talon=debug\": {err}")
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../config/talon.example.toml");

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn from_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_sources(None, "talon.toml", &[], &vars(pairs))
    }

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_sources(
            Some(text),
            "/h/talon.toml",
            &[],
            &vars(&[("USER", "alice")]),
        )
    }

    fn error_text(result: Result<Config, ConfigError>) -> String {
        match result {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    fn expected_defaults(user: &str) -> Config {
        Config {
            assistant: AssistantConfig {
                name: "Talon".into(),
                trigger: None,
                timezone: "UTC".into(),
            },
            queue: QueueConfig {
                max_concurrent_containers: 5,
                max_messages_per_prompt: 10,
                max_retries: 5,
                retry_base: Duration::from_secs(5),
            },
            container: ContainerDefaults {
                image: "talon-agent:latest".into(),
                idle_timeout: Duration::from_secs(1800),
                timeout: Duration::from_secs(1800),
                close_grace: Duration::from_secs(30),
                memory_mb: 1024,
                cpus: 1.0,
                pids_limit: 256,
                tmpfs_mb: 64,
                max_output_bytes: 10_485_760,
                run_as: None,
                mount_allowlist: None,
            },
            provider: ProviderConfig {
                kind: "anthropic".into(),
                model: "claude-sonnet-4-5".into(),
                max_tokens: 4096,
                base_url: None,
                request_timeout: Duration::from_secs(120),
                max_retries: 3,
                retry_base: Duration::from_secs(1),
                max_retry_delay: Duration::from_secs(60),
                unreachable_after: Duration::from_secs(20),
                probe_interval: Duration::from_secs(10),
                light_kind: "openai".into(),
                light_model: None,
                light_base_url: None,
                light_api_key_env: "COPILOT_API_KEY".into(),
            },
            router: RouterConfig {
                enabled: false,
                light_max_chars: 120,
                heavy_keywords: vec![
                    "code".into(),
                    "debug".into(),
                    "analyze".into(),
                    "analyse".into(),
                    "review".into(),
                    "plan".into(),
                    "research".into(),
                ],
            },
            terminal: TerminalConfig {
                user_name: user.into(),
            },
            channels: ChannelsConfig::default(),
            web: WebConfig {
                allow_loopback: false,
                timeout: Duration::from_secs(20),
                max_bytes: 1_000_000,
            },
            limits: LimitsConfig {
                max_inflight_per_container: 4,
                max_inflight: 32,
                max_model_calls_per_run: 200,
                max_tokens_per_run: 10_000_000,
                host_actions_per_minute: 60,
                max_prompt_bytes: 2_097_152,
            },
            auth: AuthConfig::default(),
            log: LogConfig {
                level: "info".into(),
            },
            agent: AgentConfig {
                runtime: AgentRuntime::Talon,
                claude_image: "talon-agent-claude:latest".into(),
            },
            secrets: Secrets::default(),
        }
    }

    /// Every key the loader reads, in schema order.
    fn schema() -> Vec<(&'static str, &'static str)> {
        let mut sources = Sources::default();
        read_settings(&mut sources, "you".into()).unwrap();
        sources.asked
    }

    #[test]
    fn defaults_without_any_source() {
        assert_eq!(
            from_env(&[("USER", "alice")]).unwrap(),
            expected_defaults("alice")
        );
        assert_eq!(from_env(&[]).unwrap().terminal.user_name, "you");
        assert_eq!(from_env(&[("USER", "")]).unwrap().terminal.user_name, "you");
    }

    #[test]
    fn example_file_parses_to_the_defaults() {
        let config = from_toml(EXAMPLE).unwrap();
        assert_eq!(config, expected_defaults("alice"));
    }

    #[test]
    fn example_file_documents_every_key_and_its_variable() {
        let keys = schema();
        assert!(keys.len() >= 25, "schema looks truncated: {keys:?}");
        for (section, key) in keys {
            let env_name = format!("TALON_{}_{}", section, key).to_ascii_uppercase();
            assert!(EXAMPLE.contains(&env_name), "example lacks {env_name}");
            let set = format!("\n{key} = ");
            let commented = format!("\n# {key} = ");
            assert!(
                EXAMPLE.contains(&set) || EXAMPLE.contains(&commented),
                "example lacks a `{key} = ` line"
            );
        }
        for var in NANOCLAW_VARS
            .iter()
            .map(|(var, _, _)| var)
            .chain(SECRET_VARS)
        {
            assert!(EXAMPLE.contains(var), "example does not mention {var}");
        }
    }

    #[test]
    fn light_tier_and_router_settings_are_read() {
        let dotenv = vars(&[
            ("COPILOT_API_URL", "http://localhost:4141"),
            ("COPILOT_MODEL", "gpt-4o-mini"),
            ("COPILOT_API_KEY", "dummy-canary"),
        ]);
        let env = vars(&[
            ("TALON_ROUTER_ENABLED", "yes"),
            ("TALON_ROUTER_HEAVY_KEYWORDS", " Code, , Deep Dive "),
            ("TALON_ROUTER_LIGHT_MAX_CHARS", "0"),
        ]);
        let config = build(None, "-", &dotenv, ".env", &env).unwrap();
        let p = &config.provider;
        assert_eq!(p.light_kind, "openai");
        assert_eq!(p.light_model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(p.light_base_url.as_deref(), Some("http://localhost:4141"));
        assert_eq!(
            config.secrets.light_api_key.as_ref().map(Secret::expose),
            Some("dummy-canary")
        );
        assert!(config.router.enabled);
        assert_eq!(config.router.light_max_chars, 0);
        assert_eq!(config.router.heavy_keywords, ["code", "deep dive"]);

        // The key's variable is configurable; the default one is then ignored.
        let config = from_toml(
            "[provider]\nlight_kind = \"Anthropic\"\nlight_api_key_env = \"OLLAMA_KEY\"\n\
             [router]\nheavy_keywords = [\"Plan\"]\n",
        )
        .unwrap();
        assert_eq!(config.provider.light_kind, "anthropic");
        assert_eq!(config.router.heavy_keywords, ["plan"]);
        let with_key = build(
            Some("[provider]\nlight_api_key_env = \"OLLAMA_KEY\"\n"),
            "talon.toml",
            &[],
            ".env",
            &vars(&[("OLLAMA_KEY", "k1"), ("COPILOT_API_KEY", "k2")]),
        )
        .unwrap();
        assert_eq!(
            with_key.secrets.light_api_key.as_ref().map(Secret::expose),
            Some("k1")
        );
    }

    #[test]
    fn bad_light_tier_and_router_values_are_refused() {
        for (toml, needle) in [
            ("[provider]\nlight_kind = \"gemini\"", "provider.light_kind"),
            (
                "[provider]\nlight_base_url = \"localhost\"",
                "provider.light_base_url",
            ),
            (
                "[provider]\nlight_api_key_env = \"my key\"",
                "provider.light_api_key_env",
            ),
            (
                "[router]\nheavy_keywords = \"code\"",
                "router.heavy_keywords",
            ),
            ("[router]\nheavy_keywords = [1]", "router.heavy_keywords"),
            ("[provider]\ncopilot_api_key = \"x\"", "COPILOT_API_KEY"),
        ] {
            let text = error_text(from_toml(toml));
            assert!(text.contains(needle), "{toml}: {text}");
        }
    }

    #[test]
    fn toml_values_are_read() {
        let config = from_toml(
            r#"
            [assistant]
            name = "폴"
            trigger = "^@폴"
            timezone = "Asia/Seoul"
            [queue]
            max_concurrent_containers = 2
            retry_base = "150ms"
            [container]
            idle_timeout = "5m"
            cpus = 2
            run_as = "1001:1001"
            [provider]
            kind = "anthropic"
            base_url = "http://127.0.0.1:4141"
            [terminal]
            user_name = "Ann"
            [channels]
            socket = true
            [log]
            level = "info,talon=debug"
            "#,
        )
        .unwrap();
        assert_eq!(config.assistant.name, "폴");
        assert_eq!(config.trigger_pattern(), "^@폴");
        assert_eq!(config.tz(), chrono_tz::Asia::Seoul);
        assert_eq!(config.queue.max_concurrent_containers, 2);
        assert_eq!(config.queue.retry_base, Duration::from_millis(150));
        assert_eq!(config.container.idle_timeout, Duration::from_secs(300));
        assert_eq!(config.container.cpus, 2.0);
        assert_eq!(config.container.run_as.as_deref(), Some("1001:1001"));
        assert_eq!(config.provider.kind, "anthropic");
        assert_eq!(
            config.provider.base_url.as_deref(),
            Some("http://127.0.0.1:4141")
        );
        assert_eq!(config.terminal.user_name, "Ann");
        assert!(config.channels.socket);
        assert_eq!(config.log.level, "info,talon=debug");
        // Untouched keys keep their defaults.
        assert_eq!(config.queue.max_messages_per_prompt, 10);
    }

    #[test]
    fn talon_variables_override_every_kind_of_value() {
        let config = from_env(&[
            ("TALON_QUEUE_RETRY_BASE", "10ms"),
            ("TALON_CONTAINER_IDLE_TIMEOUT", "2s"),
            ("TALON_ASSISTANT_NAME", "Pol"),
            ("TALON_QUEUE_MAX_RETRIES", "0"),
            ("TALON_CONTAINER_CPUS", "0.5"),
            ("TALON_CONTAINER_PIDS_LIMIT", "64"),
            ("TALON_PROVIDER_BASE_URL", "https://proxy.example"),
            ("TALON_LOG_LEVEL", "debug"),
            ("TALON_CHANNELS_SOCKET", "true"),
        ])
        .unwrap();
        assert_eq!(config.queue.retry_base, Duration::from_millis(10));
        assert_eq!(config.container.idle_timeout, Duration::from_secs(2));
        assert_eq!(config.assistant.name, "Pol");
        assert_eq!(config.trigger_pattern(), r"^@Pol\b");
        assert_eq!(config.queue.max_retries, 0);
        assert_eq!(config.container.cpus, 0.5);
        assert_eq!(config.container.pids_limit, 64);
        assert_eq!(
            config.provider.base_url.as_deref(),
            Some("https://proxy.example")
        );
        assert_eq!(config.log.level, "debug");
        assert!(config.channels.socket);
        for (text, expected) in [("1", true), ("Yes", true), ("off", false), ("FALSE", false)] {
            let config = from_env(&[("TALON_CHANNELS_SOCKET", text)]).unwrap();
            assert_eq!(config.channels.socket, expected, "{text}");
        }
    }

    #[test]
    fn precedence_is_env_then_dotenv_then_toml_then_defaults() {
        let toml = "[assistant]\nname = \"FromToml\"\n[queue]\nmax_retries = 7\nmax_messages_per_prompt = 3\n";
        let dotenv = vars(&[
            ("TALON_ASSISTANT_NAME", "FromDotenv"),
            ("TALON_QUEUE_MAX_RETRIES", "8"),
        ]);
        let env = vars(&[("TALON_ASSISTANT_NAME", "FromEnv")]);
        let config = Config::from_sources(Some(toml), "t", &dotenv, &env).unwrap();
        assert_eq!(config.assistant.name, "FromEnv");
        assert_eq!(config.queue.max_retries, 8);
        assert_eq!(config.queue.max_messages_per_prompt, 3);
        assert_eq!(config.queue.max_concurrent_containers, 5);
    }

    #[test]
    fn empty_variables_do_not_override() {
        let dotenv = vars(&[("ASSISTANT_NAME", "Pol"), ("TALON_PROVIDER_MODEL", "m1")]);
        let env = vars(&[("ASSISTANT_NAME", ""), ("TALON_PROVIDER_MODEL", "  ")]);
        let config = Config::from_sources(None, "t", &dotenv, &env).unwrap();
        assert_eq!(config.assistant.name, "Pol");
        assert_eq!(config.provider.model, "m1");
    }

    #[test]
    fn nanoclaw_names_are_understood() {
        let dotenv = parse_dotenv(
            "ASSISTANT_NAME=폴\nTRIGGER_PATTERN=^@폴\nTZ=Asia/Seoul   # host and container\n\
             ANTHROPIC_BASE_URL=http://localhost:8080\nANTHROPIC_MODEL=claude-opus-4-1\n\
             MAX_CONCURRENT_CONTAINERS=3\nCONTAINER_TIMEOUT=1800000\nIDLE_TIMEOUT=5m\n\
             COPILOT_MODEL=gpt-4o-mini\n",
        );
        let config = Config::from_sources(None, "t", &dotenv, &[]).unwrap();
        assert_eq!(config.assistant.name, "폴");
        assert_eq!(config.assistant.trigger.as_deref(), Some("^@폴"));
        assert_eq!(config.assistant.timezone, "Asia/Seoul");
        assert_eq!(
            config.provider.base_url.as_deref(),
            Some("http://localhost:8080")
        );
        assert_eq!(config.provider.model, "claude-opus-4-1");
        assert_eq!(config.queue.max_concurrent_containers, 3);
        assert_eq!(config.container.timeout, Duration::from_secs(1800));
        assert_eq!(config.container.idle_timeout, Duration::from_secs(300));
    }

    #[test]
    fn talon_name_beats_nanoclaw_name_in_the_same_source_but_not_across() {
        let env = vars(&[
            ("TALON_ASSISTANT_NAME", "Specific"),
            ("ASSISTANT_NAME", "Generic"),
        ]);
        let same = Config::from_sources(None, "t", &[], &env).unwrap();
        assert_eq!(same.assistant.name, "Specific");
        let dotenv = vars(&[("TALON_ASSISTANT_TIMEZONE", "Europe/Paris")]);
        let across =
            Config::from_sources(None, "t", &dotenv, &vars(&[("TZ", ":Asia/Tokyo")])).unwrap();
        assert_eq!(across.assistant.timezone, "Asia/Tokyo");
    }

    #[test]
    fn other_talon_variables_are_not_configuration() {
        let config = from_env(&[
            ("TALON_HOME", "/x"),
            ("TALON_CONFIG", "/y"),
            ("TALONX", "z"),
        ])
        .unwrap();
        assert_eq!(config.assistant.name, "Talon");
    }

    #[test]
    fn unknown_keys_are_errors_naming_them() {
        let message = error_text(from_toml("[queue]\nmax_retry = 3\n"));
        assert!(
            message.contains("/h/talon.toml") && message.contains("queue.max_retry"),
            "{message}"
        );

        let message = error_text(from_toml("[qeue]\nmax_retries = 3\n"));
        assert!(message.contains("unknown section [qeue]"), "{message}");

        let message = error_text(from_toml("name = \"x\"\n"));
        assert!(message.contains("unknown section [name]"), "{message}");

        let message = error_text(from_env(&[("TALON_QUEUE_RETRYBASE", "1s")]));
        assert!(
            message.contains("environment variable TALON_QUEUE_RETRYBASE")
                && message.contains("queue.retrybase"),
            "{message}"
        );
    }

    #[test]
    fn secrets_in_the_toml_file_are_refused() {
        let message = error_text(from_toml(
            "[provider]\nanthropic_api_key = \"sk-ant-canary\"\n",
        ));
        assert!(
            message.contains("ANTHROPIC_API_KEY") && message.contains("never from the config file"),
            "{message}"
        );
        assert!(!message.contains("sk-ant-canary"));
        let message = error_text(from_toml("[secrets]\nslack_bot_token = \"xoxb\"\n"));
        assert!(message.contains("secret"), "{message}");
    }

    #[test]
    fn invalid_values_name_source_key_and_problem() {
        // (environment, phrases the error must contain)
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (
                &[("TZ", "Mars/Olympus")],
                &["environment variable TZ", "assistant.timezone", "IANA"],
            ),
            (
                &[("TRIGGER_PATTERN", "^@(oops")],
                &["TRIGGER_PATTERN", "assistant.trigger", "regex"],
            ),
            (
                &[("MAX_CONCURRENT_CONTAINERS", "0")],
                &[
                    "MAX_CONCURRENT_CONTAINERS",
                    "queue.max_concurrent_containers",
                    "at least 1",
                ],
            ),
            (
                &[("TALON_QUEUE_RETRY_BASE", "0s")],
                &["TALON_QUEUE_RETRY_BASE", "longer than zero"],
            ),
            (
                &[("TALON_QUEUE_RETRY_BASE", "-5s")],
                &["TALON_QUEUE_RETRY_BASE", "duration"],
            ),
            (
                &[("TALON_QUEUE_RETRY_BASE", "5")],
                &["queue.retry_base", "duration"],
            ),
            (
                &[("IDLE_TIMEOUT", "0")],
                &["IDLE_TIMEOUT", "container.idle_timeout", "longer than zero"],
            ),
            (
                &[("TALON_QUEUE_MAX_RETRIES", "-1")],
                &["queue.max_retries", "whole number"],
            ),
            (
                &[("TALON_CONTAINER_CPUS", "0")],
                &["container.cpus", "above 0"],
            ),
            (
                &[("TALON_CONTAINER_PIDS_LIMIT", "-1")],
                &["container.pids_limit", "at least 1"],
            ),
            (
                &[("TALON_CONTAINER_MEMORY_MB", "2")],
                &["container.memory_mb", "at least 6"],
            ),
            (
                &[("TALON_CONTAINER_RUN_AS", "0:0")],
                &["container.run_as", "root"],
            ),
            (
                &[("TALON_CONTAINER_RUN_AS", "bob")],
                &["container.run_as", "uid:gid"],
            ),
            (
                &[("TALON_PROVIDER_KIND", "gemini")],
                &["provider.kind", "anthropic"],
            ),
            (
                &[("ANTHROPIC_BASE_URL", "localhost:8080")],
                &["provider.base_url", "http://"],
            ),
            (
                &[("TALON_CHANNELS_SOCKET", "maybe")],
                &["TALON_CHANNELS_SOCKET", "channels.socket", "true or false"],
            ),
            (
                &[("TALON_LOG_LEVEL", "info,[")],
                &["log.level", "log filter"],
            ),
        ];
        for (env, needles) in cases {
            let message = error_text(from_env(env));
            for needle in *needles {
                assert!(
                    message.contains(needle),
                    "{env:?}: {message:?} lacks {needle:?}"
                );
            }
        }
    }

    #[test]
    fn url_settings_are_checked_at_load() {
        for (var, key, value, problem) in [
            (
                "ANTHROPIC_BASE_URL",
                "provider.base_url",
                "http://127.0.0.1:",
                "empty port",
            ),
            (
                "ANTHROPIC_BASE_URL",
                "provider.base_url",
                "http://127.0.0.1:99999",
                "invalid port",
            ),
            (
                "ANTHROPIC_BASE_URL",
                "provider.base_url",
                "http://127.0.0.1:0",
                "invalid port",
            ),
            (
                "ANTHROPIC_BASE_URL",
                "provider.base_url",
                "http://h:80a/",
                "invalid port",
            ),
            (
                "ANTHROPIC_BASE_URL",
                "provider.base_url",
                "http://",
                "no host",
            ),
            (
                "ANTHROPIC_BASE_URL",
                "provider.base_url",
                "http://:8080",
                "no host",
            ),
            (
                "ANTHROPIC_BASE_URL",
                "provider.base_url",
                "ftp://h",
                "http://",
            ),
            (
                "ANTHROPIC_BASE_URL",
                "provider.base_url",
                "https://h/?beta=1",
                "query",
            ),
            (
                "ANTHROPIC_BASE_URL",
                "provider.base_url",
                "https://h/#top",
                "fragment",
            ),
            (
                "ANTHROPIC_BASE_URL",
                "provider.base_url",
                "http://exa mple.com",
                "not a valid URL",
            ),
            (
                "COPILOT_API_URL",
                "provider.light_base_url",
                "http://localhost:",
                "empty port",
            ),
            (
                "TALON_CHANNELS_SLACK_API_URL",
                "channels.slack_api_url",
                "http://127.0.0.1:/api",
                "empty port",
            ),
            (
                "TALON_CHANNELS_DISCORD_API_URL",
                "channels.discord_api_url",
                "https://discord.com?x=1",
                "query",
            ),
        ] {
            let message = error_text(from_env(&[(var, value)]));
            for needle in [&format!("environment variable {var}"), key, problem] {
                assert!(
                    message.contains(needle),
                    "{value:?}: {message:?} lacks {needle:?}"
                );
            }
            assert!(!message.contains('\n'), "not one line: {message:?}");
        }
    }

    #[test]
    fn a_trailing_v1_on_a_model_base_url_is_dropped() {
        let base = |pairs: &[(&str, &str)]| from_env(pairs).unwrap().provider;
        for (written, expected) in [
            ("https://api.anthropic.com/v1", "https://api.anthropic.com"),
            ("https://api.anthropic.com/v1/", "https://api.anthropic.com"),
            (
                "http://127.0.0.1:4141/proxy/v1",
                "http://127.0.0.1:4141/proxy",
            ),
            ("https://api.anthropic.com", "https://api.anthropic.com"),
            // A host called v1 and a /v10 path are not a /v1 suffix.
            ("http://v1", "http://v1"),
            ("http://h/v10", "http://h/v10"),
            ("http://[::1]:4141/", "http://[::1]:4141/"),
        ] {
            let p = base(&[
                ("ANTHROPIC_BASE_URL", written),
                ("COPILOT_API_URL", written),
            ]);
            assert_eq!(p.base_url.as_deref(), Some(expected), "{written}");
            assert_eq!(p.light_base_url.as_deref(), Some(expected), "{written}");
        }
        // The channels' URLs are not model APIs: kept as written.
        let config = from_env(&[("TALON_CHANNELS_DISCORD_API_URL", "http://h:1/v1")]).unwrap();
        assert_eq!(
            config.channels.discord_api_url.as_deref(),
            Some("http://h:1/v1")
        );
    }

    #[test]
    fn toml_type_errors_name_the_file_and_key() {
        let message = error_text(from_toml("[queue]\nretry_base = 5\n"));
        assert!(
            message.contains("config file /h/talon.toml")
                && message.contains("queue.retry_base")
                && message.contains("\"5s\""),
            "{message}"
        );
        let message = error_text(from_toml("[queue]\nmax_concurrent_containers = \"many\"\n"));
        assert!(message.contains("whole number, not a string"), "{message}");
        let message = error_text(from_toml("[channels]\nsocket = \"yes\"\n"));
        assert!(
            message.contains("channels.socket") && message.contains("true or false, not a string"),
            "{message}"
        );
        let message = error_text(from_toml("[assistant]\nname = 3\n"));
        assert!(
            message.contains("assistant.name") && message.contains("must be a string"),
            "{message}"
        );
        let message = error_text(from_toml("[assistant]\nname = \"  \"\n"));
        assert!(message.contains("must not be empty"), "{message}");
        let message = error_text(from_toml("[assistant\n"));
        assert!(
            message.contains("/h/talon.toml") && message.contains("invalid TOML"),
            "{message}"
        );
    }

    #[test]
    fn secrets_come_from_env_over_dotenv_and_empty_is_absent() {
        let dotenv = vars(&[
            ("ANTHROPIC_API_KEY_FALLBACK", "from-dotenv"),
            ("SLACK_BOT_TOKEN", "xoxb-dotenv"),
            ("DISCORD_BOT_TOKEN", "dc-dotenv"),
            ("ANTHROPIC_API_KEY", ""),
        ]);
        let env = vars(&[
            ("SLACK_BOT_TOKEN", "xoxb-env"),
            ("SLACK_APP_TOKEN", "xapp-env"),
            ("DISCORD_BOT_TOKEN", ""),
            ("CLAUDE_CODE_OAUTH_TOKEN", "oauth-env"),
        ]);
        let secrets = Config::from_sources(None, "t", &dotenv, &env)
            .unwrap()
            .secrets;
        let expose = |secret: &Option<Secret>| secret.as_ref().map(|s| s.expose().to_string());
        assert_eq!(expose(&secrets.anthropic_api_key), None);
        assert_eq!(
            expose(&secrets.anthropic_api_key_fallback).as_deref(),
            Some("from-dotenv")
        );
        assert_eq!(
            expose(&secrets.slack_bot_token).as_deref(),
            Some("xoxb-env")
        );
        assert_eq!(
            expose(&secrets.slack_app_token).as_deref(),
            Some("xapp-env")
        );
        assert_eq!(
            expose(&secrets.discord_bot_token).as_deref(),
            Some("dc-dotenv")
        );
        assert_eq!(
            expose(&secrets.claude_oauth_token).as_deref(),
            Some("oauth-env")
        );
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let canary = "sk-ant-CANARY-1234";
        let env = vars(
            &SECRET_VARS
                .iter()
                .map(|var| (*var, canary))
                .collect::<Vec<_>>(),
        );
        let config = Config::from_sources(None, "t", &[], &env).unwrap();
        assert!(config.secrets.anthropic_api_key.is_some());
        let debug = format!("{config:?} {config:#?}");
        assert!(!debug.contains("CANARY"), "{debug}");
        assert!(debug.contains("[redacted]"));
    }

    #[test]
    fn parse_dotenv_handles_the_usual_shapes() {
        let text = r#"
# a comment
   # an indented comment
PLAIN=value
export EXPORTED=yes
SPACED = around  
DOUBLE="two words # not a comment"
SINGLE='raw \n "$x" # kept'
ESCAPED="line1\nline2 \"q\" \\"
INLINE=Asia/Seoul     # comment
HASH=abc#def
EMPTY=
EQUALS=a=b=c
UNCLOSED="half
not an assignment
1BAD=x
"#;
        let pairs = parse_dotenv(text);
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PLAIN"), Some("value"));
        assert_eq!(get("EXPORTED"), Some("yes"));
        assert_eq!(get("SPACED"), Some("around"));
        assert_eq!(get("DOUBLE"), Some("two words # not a comment"));
        assert_eq!(get("SINGLE"), Some(r#"raw \n "$x" # kept"#));
        assert_eq!(get("ESCAPED"), Some("line1\nline2 \"q\" \\"));
        assert_eq!(get("INLINE"), Some("Asia/Seoul"));
        assert_eq!(get("HASH"), Some("abc#def"));
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(get("EQUALS"), Some("a=b=c"));
        assert_eq!(get("UNCLOSED"), Some("\"half"));
        assert_eq!(get("1BAD"), None);
        assert_eq!(pairs.len(), 11, "{pairs:?}");
    }

    #[test]
    fn load_reads_files_from_home_and_requires_an_explicit_file() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::at(dir.path());
        // Nothing present: defaults (plus whatever the test process env holds).
        Config::load(&paths, None).unwrap();

        std::fs::write(
            paths.config_file(),
            "[queue]\nmax_messages_per_prompt = 4\n",
        )
        .unwrap();
        std::fs::write(
            paths.env_file(),
            "TALON_QUEUE_MAX_RETRIES=9\nDISCORD_BOT_TOKEN='dc'\n",
        )
        .unwrap();
        let config = Config::load(&paths, None).unwrap();
        assert_eq!(config.queue.max_messages_per_prompt, 4);
        assert_eq!(config.queue.max_retries, 9);
        assert!(config.secrets.discord_bot_token.is_some());

        let explicit = dir.path().join("other.toml");
        std::fs::write(&explicit, "[queue]\nmax_messages_per_prompt = 6\n").unwrap();
        assert_eq!(
            Config::load(&paths, Some(&explicit))
                .unwrap()
                .queue
                .max_messages_per_prompt,
            6
        );

        let missing = dir.path().join("missing.toml");
        let message = Config::load(&paths, Some(&missing))
            .unwrap_err()
            .to_string();
        assert!(message.contains("missing.toml"), "{message}");

        std::fs::write(paths.env_file(), "TALON_QUEUE_MAX_RETRIES=lots\n").unwrap();
        let message = Config::load(&paths, None).unwrap_err().to_string();
        assert!(
            message.contains("TALON_QUEUE_MAX_RETRIES in ") && message.contains(".env"),
            "{message}"
        );
    }
}
