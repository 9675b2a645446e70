//! The Threads (Meta) long-lived access token: it lives 60 days, and talon
//! refreshes it when 7 days or less are left (SPEC §9, as the seeds' host
//! did), before each container start of a group that uses it.
//!
//! - The token is `THREADS_ACCESS_TOKEN`, from the process environment or
//!   else `<home>/.env` (`THREADS_APP_ID`, `THREADS_APP_SECRET` and
//!   `THREADS_USER_ID` are read and kept beside it; the refresh needs only
//!   the token).
//! - `data/threads-token-state.json` holds `{"expires_at": <unix ms>,
//!   "refreshed_at": <unix ms or null>}`. Without it the expiry is unknown,
//!   so talon refreshes once to learn it: refreshing a valid long-lived
//!   token yields a fresh 60-day one.
//! - The refresh is `GET <base>/refresh_access_token?grant_type=
//!   th_refresh_token&access_token=<token>`. The token rides in the query
//!   string, so no URL ever goes into an error text.
//! - A refreshed token replaces the `THREADS_ACCESS_TOKEN=` line(s) of
//!   `.env` in place (every other byte kept, the file's mode too), then the
//!   state file is written; both atomically. When the token came from the
//!   process environment talon cannot update its source: `.env` is left
//!   alone (a line there would be shadowed by the environment anyway), the
//!   state is not written (it must keep describing the token talon reads at
//!   start, so the real expiry is never lost), the new token is returned for
//!   use until restart, and the status warns.
//!
//! The decision ([`refresh_due`]) and the `.env` edit
//! ([`replace_env_value`]) are pure functions; [`ensure_fresh`] does the
//! I/O around them.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::paths::Paths;
use crate::secret::Secret;

pub const DEFAULT_BASE_URL: &str = "https://graph.threads.net";
pub const DAY_MS: i64 = 86_400_000;
/// How long a long-lived token lives.
pub const TOKEN_LIFETIME_MS: i64 = 60 * DAY_MS;
/// Refresh when this much (or less) is left.
pub const REFRESH_MARGIN_MS: i64 = 7 * DAY_MS;
/// The state file's name, in `<home>/data/`.
pub const STATE_FILE: &str = "threads-token-state.json";

pub const ACCESS_TOKEN_VAR: &str = "THREADS_ACCESS_TOKEN";
pub const APP_ID_VAR: &str = "THREADS_APP_ID";
pub const APP_SECRET_VAR: &str = "THREADS_APP_SECRET";
pub const USER_ID_VAR: &str = "THREADS_USER_ID";

/// A refresh must not hold a container start for long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A refresh answer is a few hundred bytes; more is not a refresh answer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const MAX_SERVER_MESSAGE_CHARS: usize = 300;
/// Meta's error code for an invalid, expired or revoked access token.
const INVALID_TOKEN_CODE: i64 = 190;
/// Unix ms of 2001-09-09: an `expires_at` below it is not milliseconds
/// (seconds from another tool, or garbage), so it counts as unknown.
const PLAUSIBLE_MS: i64 = 1_000_000_000_000;

/// Where the refresh goes. The config key `[auth] threads_url` (env
/// `TALON_AUTH_THREADS_URL`) fills it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadsSettings {
    /// Without a trailing `/refresh_access_token`; a trailing `/` is fine.
    pub base_url: String,
}

impl Default for ThreadsSettings {
    fn default() -> Self {
        ThreadsSettings {
            base_url: DEFAULT_BASE_URL.into(),
        }
    }
}

/// The contents of `data/threads-token-state.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadsState {
    /// Unix ms.
    pub expires_at: i64,
    /// Unix ms of talon's last successful refresh; `null` if never.
    #[serde(default)]
    pub refreshed_at: Option<i64>,
}

/// What [`refresh_due`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshDecision {
    /// More than [`REFRESH_MARGIN_MS`] left.
    NotDue,
    /// Within the margin, or the expiry is unknown (no state yet).
    Due,
    /// Past its expiry: a refresh may still work if the token in `.env`
    /// was replaced by hand, but failing it is an error.
    Expired,
}

/// Whether to refresh now. No state means the expiry is unknown: refresh
/// once to learn it.
pub fn refresh_due(state: Option<&ThreadsState>, now_ms: i64) -> RefreshDecision {
    let Some(state) = state else {
        return RefreshDecision::Due;
    };
    let left = state.expires_at.saturating_sub(now_ms);
    if left <= 0 {
        RefreshDecision::Expired
    } else if left <= REFRESH_MARGIN_MS {
        RefreshDecision::Due
    } else {
        RefreshDecision::NotDue
    }
}

/// Where the token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The process environment: talon cannot update it.
    Environment,
    /// `<home>/.env`: a refresh rewrites it.
    DotEnv,
}

/// The Threads variables. `Debug` shows no secret ([`Secret`] redacts).
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadsCredentials {
    pub access_token: Secret,
    pub source: TokenSource,
    pub app_id: Option<String>,
    pub app_secret: Option<Secret>,
    pub user_id: Option<String>,
}

impl ThreadsCredentials {
    /// The variables from `env` first, then `dotenv` (as the rest of the
    /// configuration: the process environment wins); empty values count as
    /// unset. `None` without an access token.
    pub fn from_sources(
        env: &[(String, String)],
        dotenv: &[(String, String)],
    ) -> Option<ThreadsCredentials> {
        let first = |pairs: &[(String, String)], name: &str| {
            pairs
                .iter()
                .filter(|(var, _)| var == name)
                .map(|(_, value)| value.trim())
                .find(|value| !value.is_empty())
                .map(str::to_string)
        };
        let find = |name: &str| first(env, name).or_else(|| first(dotenv, name));
        let (access_token, source) = match first(env, ACCESS_TOKEN_VAR) {
            Some(token) => (token, TokenSource::Environment),
            None => (first(dotenv, ACCESS_TOKEN_VAR)?, TokenSource::DotEnv),
        };
        Some(ThreadsCredentials {
            access_token: Secret::new(access_token),
            source,
            app_id: find(APP_ID_VAR),
            app_secret: find(APP_SECRET_VAR).map(Secret::new),
            user_id: find(USER_ID_VAR),
        })
    }

    /// [`ThreadsCredentials::from_sources`] with `<home>/.env` read (a
    /// missing file is no variables).
    pub fn load(
        paths: &Paths,
        env: &[(String, String)],
    ) -> Result<Option<ThreadsCredentials>, ThreadsError> {
        let env_file = paths.env_file();
        let dotenv = match std::fs::read_to_string(&env_file) {
            Ok(text) => crate::config::parse_dotenv(&text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(ThreadsError::io("read", &env_file, &err)),
        };
        Ok(ThreadsCredentials::from_sources(env, &dotenv))
    }
}

/// The Threads variables of the process environment (a value that is not
/// UTF-8 counts as unset).
pub fn process_env() -> Vec<(String, String)> {
    [ACCESS_TOKEN_VAR, APP_ID_VAR, APP_SECRET_VAR, USER_ID_VAR]
        .into_iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect()
}

/// A successful refresh. `Debug` shows no token.
#[derive(Debug, Clone, PartialEq)]
pub struct Refreshed {
    pub access_token: Secret,
    pub token_type: Option<String>,
    pub expires_in_secs: i64,
}

impl Refreshed {
    pub fn expires_at_ms(&self, now_ms: i64) -> i64 {
        now_ms.saturating_add(self.expires_in_secs.saturating_mul(1000))
    }
}

/// Every failure. No variant ever holds the token: URLs are stripped from
/// transport errors and server text is scrubbed of it.
#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    #[error("{ACCESS_TOKEN_VAR} is not set (neither in the environment nor in {env_file})")]
    NoToken { env_file: String },
    #[error("the Threads base URL {base_url:?} is not usable: {message}")]
    BadUrl { base_url: String, message: String },
    #[error("{}", refused_text(*.status, .error_type.as_deref(), *.code, .message.as_deref(), true))]
    Refused {
        status: u16,
        /// Meta's `error.type`, e.g. `OAuthException`.
        error_type: Option<String>,
        /// Meta's `error.code`; 190 is an invalid or expired token.
        code: Option<i64>,
        /// Shortened, and scrubbed of the token.
        message: Option<String>,
    },
    #[error("cannot reach the Threads API: {0}")]
    Transport(String),
    #[error("the Threads API's refresh answer could not be read: {0}")]
    Malformed(String),
    #[error(
        "the Threads access token expired on {expired_on}; renew it with the OAuth flow \
         (see the README). The refresh failed: {}",
        cause_text(cause)
    )]
    Expired {
        /// A UTC date and time.
        expired_on: String,
        cause: Box<ThreadsError>,
    },
    #[error("cannot {action} {path}: {message}")]
    Io {
        action: &'static str,
        path: String,
        message: String,
    },
}

impl ThreadsError {
    /// The API said the token itself is no good (invalid, expired,
    /// revoked): waiting will not help, only a new token will.
    pub fn is_token_rejected(&self) -> bool {
        match self {
            ThreadsError::Refused { status, code, .. } => {
                *code == Some(INVALID_TOKEN_CODE) || *status == 401
            }
            ThreadsError::Expired { .. } => true,
            _ => false,
        }
    }

    fn io(action: &'static str, path: &Path, err: &std::io::Error) -> ThreadsError {
        ThreadsError::Io {
            action,
            path: path.display().to_string(),
            message: err.to_string(),
        }
    }
}

fn refused_text(
    status: u16,
    error_type: Option<&str>,
    code: Option<i64>,
    message: Option<&str>,
    with_advice: bool,
) -> String {
    let mut text = format!("the Threads API refused the token refresh (HTTP {status}");
    match (error_type, code) {
        (Some(kind), Some(code)) => text.push_str(&format!(", {kind} code {code}")),
        (Some(kind), None) => text.push_str(&format!(", {kind}")),
        (None, Some(code)) => text.push_str(&format!(", code {code}")),
        (None, None) => {}
    }
    text.push(')');
    if let Some(message) = message.filter(|m| !m.is_empty()) {
        text.push_str(": ");
        text.push_str(message);
    }
    if with_advice && (code == Some(INVALID_TOKEN_CODE) || status == 401) {
        text.push_str(
            "; the token is invalid or expired: renew it with the OAuth flow (see the README)",
        );
    }
    text
}

/// A cause inside [`ThreadsError::Expired`], whose own text already gives
/// the advice.
fn cause_text(cause: &ThreadsError) -> String {
    match cause {
        ThreadsError::Refused {
            status,
            error_type,
            code,
            message,
        } => refused_text(
            *status,
            error_type.as_deref(),
            *code,
            message.as_deref(),
            false,
        ),
        other => other.to_string(),
    }
}

/// Asks the API for a fresh long-lived token in exchange for `token` (which
/// must still be valid).
pub async fn refresh(
    client: &reqwest::Client,
    base_url: &str,
    token: &Secret,
) -> Result<Refreshed, ThreadsError> {
    let url = refresh_url(base_url, token)?;
    let mut response = client
        .get(url)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| transport(e, token))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(e, token))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ThreadsError::Malformed(format!(
                "HTTP {}, more than {MAX_ANSWER_BYTES} bytes",
                status.as_u16()
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(refused(status.as_u16(), &body, token));
    }
    parse_answer(&body)
}

fn refresh_url(base_url: &str, token: &Secret) -> Result<reqwest::Url, ThreadsError> {
    let joined = format!("{}/refresh_access_token", base_url.trim_end_matches('/'));
    let mut url = reqwest::Url::parse(&joined).map_err(|e| ThreadsError::BadUrl {
        base_url: base_url.to_string(),
        message: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ThreadsError::BadUrl {
            base_url: base_url.to_string(),
            message: "not an http(s) URL".into(),
        });
    }
    url.query_pairs_mut()
        .append_pair("grant_type", "th_refresh_token")
        .append_pair("access_token", token.expose());
    Ok(url)
}

/// reqwest's text names the URL, which holds the token: drop it, join the
/// causes (the outer text alone says only "error sending request"), and
/// scrub the token in case a cause repeats it.
fn transport(error: reqwest::Error, token: &Secret) -> ThreadsError {
    if error.is_timeout() {
        return ThreadsError::Transport(format!(
            "no answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        ));
    }
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    ThreadsError::Transport(scrub(&text, token))
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    error_type: Option<String>,
    #[serde(default)]
    code: Option<i64>,
}

/// A non-2xx answer: Meta's `{"error": {...}}` when it is one, else the
/// start of the body.
fn refused(status: u16, body: &[u8], token: &Secret) -> ThreadsError {
    let clean = |text: &str| shorten(&scrub(text, token));
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => ThreadsError::Refused {
            status,
            error_type: parsed.error.error_type.map(|t| clean(&t)),
            code: parsed.error.code,
            message: parsed.error.message.map(|m| clean(&m)),
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            ThreadsError::Refused {
                status,
                error_type: None,
                code: None,
                message: (!text.is_empty()).then(|| clean(text)),
            }
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<Value>,
}

fn parse_answer(body: &[u8]) -> Result<Refreshed, ThreadsError> {
    // serde_json's errors name a position, never the input's text.
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| ThreadsError::Malformed(format!("not the expected JSON ({e})")))?;
    let access_token = answer
        .access_token
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ThreadsError::Malformed("no access_token".into()))?;
    let expires_in_secs = match &answer.expires_in {
        // Refreshing always yields a 60-day token; an answer that does not
        // say so still carries a good token, which is not thrown away.
        None | Some(Value::Null) => TOKEN_LIFETIME_MS / 1000,
        Some(value) => value
            .as_i64()
            .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|secs| *secs > 0)
            .ok_or_else(|| {
                ThreadsError::Malformed(format!("expires_in is not a positive number: {value}"))
            })?,
    };
    Ok(Refreshed {
        access_token: Secret::new(access_token),
        token_type: answer.token_type,
        expires_in_secs,
    })
}

fn scrub(text: &str, token: &Secret) -> String {
    if token.expose().is_empty() {
        text.to_string()
    } else {
        text.replace(token.expose(), "[redacted]")
    }
}

fn shorten(text: &str) -> String {
    let mut chars = text.chars();
    let short: String = chars.by_ref().take(MAX_SERVER_MESSAGE_CHARS).collect();
    if chars.next().is_some() {
        format!("{short}…")
    } else {
        short
    }
}

/// `name=value` in `.env` text: every assignment of `name` (also after
/// `export `) gets the new value in its own quoting style (a style that
/// cannot hold the value becomes double quotes), and everything else —
/// other lines, comments (also after the value), blank lines, line endings
/// (CRLF too), a missing final newline — stays byte for byte. Commented-out
/// assignments and longer names (`<name>_OLD`) are not assignments of
/// `name`. Without any assignment, one line is appended.
pub fn replace_env_value(text: &str, name: &str, value: &str) -> String {
    let mut out = String::with_capacity(text.len() + value.len() + name.len() + 2);
    let mut found = false;
    let mut newline = "\n";
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let (content, ending) = match line.strip_suffix("\r\n") {
            Some(content) => (content, "\r\n"),
            None => match line.strip_suffix('\n') {
                Some(content) => (content, "\n"),
                None => (line, ""),
            },
        };
        if index == 0 && ending == "\r\n" {
            newline = "\r\n"; // the first line sets the style of an appended one
        }
        match rewrite_assignment(content, name, value) {
            Some(rewritten) => {
                out.push_str(&rewritten);
                found = true;
            }
            None => out.push_str(content),
        }
        out.push_str(ending);
    }
    if !found {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(newline);
        }
        out.push_str(name);
        out.push('=');
        out.push_str(&bare_or_quoted(value));
        out.push_str(newline);
    }
    out
}

/// The line with the new value if it assigns `name`, read exactly as
/// [`crate::config::parse_dotenv`] reads it.
fn rewrite_assignment(content: &str, name: &str, value: &str) -> Option<String> {
    let trimmed = content.trim_start();
    if trimmed.starts_with('#') {
        return None;
    }
    let body = trimmed.strip_prefix("export ").unwrap_or(trimmed);
    let eq = body.find('=')?;
    if body[..eq].trim() != name {
        return None;
    }
    let value_start = content.len() - body.len() + eq + 1;
    let (head, raw) = content.split_at(value_start);
    Some(format!("{head}{}", rewrite_value(raw, value)))
}

/// `raw` (all after `=`) with the value replaced and its leading space and
/// trailing comment kept.
fn rewrite_value(raw: &str, value: &str) -> String {
    let rest = raw.trim_start();
    let spaces = &raw[..raw.len() - rest.len()];
    if let Some(inner) = rest.strip_prefix('"') {
        if let Some(close) = closing_double_quote(inner) {
            return format!("{spaces}{}{}", double_quoted(value), &inner[close + 1..]);
        }
    } else if let Some(inner) = rest.strip_prefix('\'') {
        if let Some(close) = inner.find('\'') {
            let quoted = if value.contains(['\'', '\n', '\r']) {
                double_quoted(value)
            } else {
                format!("'{value}'")
            };
            return format!("{spaces}{quoted}{}", &inner[close + 1..]);
        }
    }
    // Unquoted (an unclosed quote is read literally, so it counts too).
    let comment = unquoted_value_end(raw);
    let value_end = raw[..comment].trim_end().len();
    let new = bare_or_quoted(value);
    if value_end <= spaces.len() {
        // The old value was empty: a comment after it needs a space before it.
        return match rest {
            "" => format!("{spaces}{new}"),
            comment => format!("{new} {comment}"),
        };
    }
    format!("{spaces}{new}{}", &raw[value_end..])
}

/// Where an unquoted value ends: at a `#` after whitespace (a comment),
/// the rule of `parse_dotenv`.
fn unquoted_value_end(raw: &str) -> usize {
    let mut previous_is_space = true;
    for (index, c) in raw.char_indices() {
        if c == '#' && previous_is_space && index > 0 {
            return index;
        }
        previous_is_space = c.is_whitespace();
    }
    raw.len()
}

/// The index in `inner` (after an opening `"`) of the closing quote; a
/// backslash escapes the next character.
fn closing_double_quote(inner: &str) -> Option<usize> {
    let mut chars = inner.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Some(index),
            '\\' => {
                chars.next()?;
            }
            _ => {}
        }
    }
    None
}

fn double_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
    out.push('"');
    out
}

/// The value as is when the parser reads it back unchanged, else quoted.
fn bare_or_quoted(value: &str) -> String {
    let needs_quotes =
        value.starts_with(['"', '\'']) || value.chars().any(|c| c.is_whitespace() || c == '#');
    if needs_quotes {
        double_quoted(value)
    } else {
        value.to_string()
    }
}

/// `<home>/data/threads-token-state.json`.
pub fn state_file(paths: &Paths) -> PathBuf {
    paths.data().join(STATE_FILE)
}

/// The state file's contents; `None` when there is none yet. A file that
/// does not parse (or whose expiry is not plausibly in ms) counts as none:
/// the refresh that follows learns the expiry and rewrites it.
pub fn read_state(paths: &Paths) -> Result<Option<ThreadsState>, ThreadsError> {
    let path = state_file(paths);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(ThreadsError::io("read", &path, &err)),
    };
    let state = parse_state(&text);
    if state.is_none() {
        tracing::warn!(path = %path.display(), "ignoring an unreadable Threads token state file");
    }
    Ok(state)
}

fn parse_state(text: &str) -> Option<ThreadsState> {
    serde_json::from_str::<ThreadsState>(text)
        .ok()
        .filter(|state| state.expires_at >= PLAUSIBLE_MS)
}

/// Writes the state file atomically, mode 0600.
pub fn write_state(paths: &Paths, state: &ThreadsState) -> Result<(), ThreadsError> {
    let path = state_file(paths);
    let mut text = serde_json::to_string_pretty(state).map_err(|e| ThreadsError::Io {
        action: "encode",
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    text.push('\n');
    std::fs::create_dir_all(paths.data())
        .map_err(|e| ThreadsError::io("create", &paths.data(), &e))?;
    crate::safe_fs::write_atomically(&path, text.as_bytes(), 0o600)
        .map_err(|e| ThreadsError::io("write", &path, &e))
}

/// Puts `token` into the `.env` file in place, keeping its mode. A symlinked
/// `.env` (talon's home is the host's, never a mount) is updated at its
/// target so the link survives.
fn save_token_to_dotenv(env_file: &Path, token: &Secret) -> std::io::Result<()> {
    let real = std::fs::canonicalize(env_file)?;
    let mode = std::fs::metadata(&real)?.permissions().mode() & 0o7777;
    let text = std::fs::read_to_string(&real)?;
    let updated = replace_env_value(&text, ACCESS_TOKEN_VAR, token.expose());
    crate::safe_fs::write_atomically(&real, updated.as_bytes(), mode)?;
    // The temp file's mode went through the umask: restore the exact mode.
    let written = std::fs::metadata(&real)?.permissions().mode() & 0o7777;
    if written != mode {
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// For `talon status`, `doctor` and the dump. `Debug` and `Display` show
/// no token.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadsStatus {
    /// When this was checked (unix ms).
    pub checked_at_ms: i64,
    /// `None`: unknown (no state yet and no refresh got through).
    pub expires_at_ms: Option<i64>,
    pub refreshed_at_ms: Option<i64>,
    /// Whole days left, 0 once expired.
    pub days_left: Option<i64>,
    pub expired: bool,
    /// This check refreshed the token.
    pub refreshed_now: bool,
    /// Something to fix or that will be retried (a failed refresh while the
    /// token is still valid, a token talon cannot save).
    pub warning: Option<String>,
    /// The token to use (the refreshed one after a refresh); `None` from
    /// [`inspect`], which reads only the state.
    pub token: Option<Secret>,
}

impl ThreadsStatus {
    fn new(
        now_ms: i64,
        expires_at_ms: Option<i64>,
        refreshed_at_ms: Option<i64>,
        token: Option<Secret>,
    ) -> ThreadsStatus {
        let left = expires_at_ms.map(|at| at.saturating_sub(now_ms));
        ThreadsStatus {
            checked_at_ms: now_ms,
            expires_at_ms,
            refreshed_at_ms,
            days_left: left.map(|left| left.max(0) / DAY_MS),
            expired: left.is_some_and(|left| left <= 0),
            refreshed_now: false,
            warning: None,
            token,
        }
    }

    fn from_state(state: Option<&ThreadsState>, now_ms: i64, token: Option<Secret>) -> Self {
        ThreadsStatus::new(
            now_ms,
            state.map(|s| s.expires_at),
            state.and_then(|s| s.refreshed_at),
            token,
        )
    }

    fn with_warning(mut self, warning: Option<String>) -> Self {
        self.warning = warning;
        self
    }
}

impl fmt::Display for ThreadsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Threads token: ")?;
        match (self.expires_at_ms, self.days_left) {
            (Some(at), _) if self.expired => write!(
                f,
                "expired on {}; renew it with the OAuth flow (see the README)",
                utc(at)
            )?,
            (Some(at), Some(days)) => {
                let unit = if days == 1 { "day" } else { "days" };
                write!(f, "{days} {unit} left (expires {})", utc(at))?;
            }
            _ => f.write_str("expiry unknown (no refresh has got through yet)")?,
        }
        if self.refreshed_now {
            f.write_str(", refreshed just now")?;
        } else if let Some(at) = self.refreshed_at_ms {
            write!(f, ", last refreshed {}", utc(at))?;
        }
        if let Some(warning) = &self.warning {
            write!(f, "; warning: {warning}")?;
        }
        Ok(())
    }
}

/// A UTC date and time for messages.
fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|at| at.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// The state as last recorded, without a network call (for `talon status`
/// and `doctor`).
pub fn inspect(paths: &Paths, now_ms: i64) -> Result<ThreadsStatus, ThreadsError> {
    let state = read_state(paths)?;
    Ok(ThreadsStatus::from_state(state.as_ref(), now_ms, None))
}

/// Refreshes the token when due (see the module docs) with the variables of
/// the process environment; [`ensure_fresh_with_env`] has the rules.
pub async fn ensure_fresh(
    paths: &Paths,
    settings: &ThreadsSettings,
    client: &reqwest::Client,
    now_ms: i64,
) -> Result<ThreadsStatus, ThreadsError> {
    ensure_fresh_with_env(paths, settings, client, &process_env(), now_ms).await
}

/// Reads the token (`env`, then `.env`) and the state; when a refresh is
/// due, refreshes under a lock (another talon, e.g. `doctor`, may be at it
/// too: after taking the lock, state and token are read again) and saves
/// the new token and state.
///
/// - No token: [`ThreadsError::NoToken`].
/// - The API rejects the token (code 190, HTTP 401): that error, whatever
///   the state says; `.env` is untouched.
/// - Any other failure: with the token expired, [`ThreadsError::Expired`];
///   while it is still valid (or its expiry is unknown), an `Ok` status with
///   the old token and a warning, to be retried at the next check.
/// - Refreshed but not saved (a write failed, or the token comes from the
///   process environment): an `Ok` status with the new token and a warning.
pub async fn ensure_fresh_with_env(
    paths: &Paths,
    settings: &ThreadsSettings,
    client: &reqwest::Client,
    env: &[(String, String)],
    now_ms: i64,
) -> Result<ThreadsStatus, ThreadsError> {
    let (credentials, state) = read_inputs(paths, env)?;
    if refresh_due(state.as_ref(), now_ms) == RefreshDecision::NotDue {
        return Ok(not_due(&credentials, state.as_ref(), now_ms));
    }
    let _lock = lock(paths).await?;
    let (credentials, state) = read_inputs(paths, env)?;
    let decision = refresh_due(state.as_ref(), now_ms);
    if decision == RefreshDecision::NotDue {
        return Ok(not_due(&credentials, state.as_ref(), now_ms));
    }
    match refresh(client, &settings.base_url, &credentials.access_token).await {
        Ok(refreshed) => Ok(save(paths, &credentials, &refreshed, now_ms)),
        Err(cause) if decision == RefreshDecision::Expired => Err(ThreadsError::Expired {
            expired_on: state.map_or_else(String::new, |s| utc(s.expires_at)),
            cause: Box::new(cause),
        }),
        Err(rejected) if rejected.is_token_rejected() => Err(rejected),
        Err(cause) => {
            tracing::warn!(error = %cause, "the Threads token refresh failed; retrying at the next check");
            let status =
                ThreadsStatus::from_state(state.as_ref(), now_ms, Some(credentials.access_token));
            Ok(status.with_warning(Some(format!(
                "the token refresh failed (retried at the next check): {cause}"
            ))))
        }
    }
}

fn read_inputs(
    paths: &Paths,
    env: &[(String, String)],
) -> Result<(ThreadsCredentials, Option<ThreadsState>), ThreadsError> {
    let credentials =
        ThreadsCredentials::load(paths, env)?.ok_or_else(|| ThreadsError::NoToken {
            env_file: paths.env_file().display().to_string(),
        })?;
    Ok((credentials, read_state(paths)?))
}

fn not_due(
    credentials: &ThreadsCredentials,
    state: Option<&ThreadsState>,
    now_ms: i64,
) -> ThreadsStatus {
    ThreadsStatus::from_state(state, now_ms, Some(credentials.access_token.clone()))
        .with_warning(environment_warning(credentials))
}

fn environment_warning(credentials: &ThreadsCredentials) -> Option<String> {
    (credentials.source == TokenSource::Environment).then(|| {
        format!(
            "{ACCESS_TOKEN_VAR} comes from the process environment, which talon cannot update, \
             so a refreshed token lasts only until talon restarts; keep it in .env instead"
        )
    })
}

/// Saves a refreshed token: `.env` first, then the state, so a failure in
/// between leaves a state that asks for another refresh rather than one
/// that vouches for a token that was never saved.
fn save(
    paths: &Paths,
    credentials: &ThreadsCredentials,
    refreshed: &Refreshed,
    now_ms: i64,
) -> ThreadsStatus {
    let new_state = ThreadsState {
        expires_at: refreshed.expires_at_ms(now_ms),
        refreshed_at: Some(now_ms),
    };
    let saved = match credentials.source {
        TokenSource::Environment => Err(environment_warning(credentials).unwrap_or_default()),
        TokenSource::DotEnv => {
            let env_file = paths.env_file();
            save_token_to_dotenv(&env_file, &refreshed.access_token).map_err(|e| {
                format!(
                    "the refreshed token could not be saved to {} ({e}); it is used until \
                     talon restarts and refreshed again at the next check",
                    env_file.display()
                )
            })
        }
    };
    let warning = match saved {
        Err(warning) => Some(warning),
        Ok(()) => write_state(paths, &new_state)
            .err()
            .map(|e| format!("{e}; the token is saved, but the next check refreshes it again")),
    };
    tracing::info!(
        expires = %utc(new_state.expires_at),
        saved = warning.is_none(),
        "refreshed the Threads access token"
    );
    let mut status = ThreadsStatus::new(
        now_ms,
        Some(new_state.expires_at),
        new_state.refreshed_at,
        Some(refreshed.access_token.clone()),
    );
    status.refreshed_now = true;
    status.with_warning(warning)
}

/// An advisory lock beside the state file, held while refreshing.
async fn lock(paths: &Paths) -> Result<std::fs::File, ThreadsError> {
    let data = paths.data();
    let lock_path = data.join(format!("{STATE_FILE}.lock"));
    let path_for_error = lock_path.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        std::fs::create_dir_all(&data)?;
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        fs4::FileExt::lock(&file)?;
        Ok(file)
    })
    .await
    .map_err(|e| ThreadsError::Io {
        action: "lock",
        path: path_for_error.display().to_string(),
        message: e.to_string(),
    })?
    .map_err(|e| ThreadsError::io("lock", &path_for_error, &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_dotenv;

    const NOW: i64 = 1_750_000_000_000;

    fn state_issued_days_ago(days: i64) -> ThreadsState {
        let issued = NOW - days * DAY_MS;
        ThreadsState {
            expires_at: issued + TOKEN_LIFETIME_MS,
            refreshed_at: Some(issued),
        }
    }

    #[test]
    fn a_refresh_is_due_with_seven_days_left_not_with_eight() {
        let at_53 = state_issued_days_ago(53);
        assert_eq!(refresh_due(Some(&at_53), NOW), RefreshDecision::Due);
        let at_52 = state_issued_days_ago(52);
        assert_eq!(refresh_due(Some(&at_52), NOW), RefreshDecision::NotDue);
        // One millisecond more than the margin is not due yet.
        let edge = ThreadsState {
            expires_at: NOW + REFRESH_MARGIN_MS + 1,
            refreshed_at: None,
        };
        assert_eq!(refresh_due(Some(&edge), NOW), RefreshDecision::NotDue);
    }

    #[test]
    fn past_the_expiry_is_expired_and_no_state_is_due() {
        let at_60 = state_issued_days_ago(60);
        assert_eq!(refresh_due(Some(&at_60), NOW), RefreshDecision::Expired);
        let at_90 = state_issued_days_ago(90);
        assert_eq!(refresh_due(Some(&at_90), NOW), RefreshDecision::Expired);
        assert_eq!(refresh_due(None, NOW), RefreshDecision::Due);
        let extreme = ThreadsState {
            expires_at: i64::MIN,
            refreshed_at: None,
        };
        assert_eq!(
            refresh_due(Some(&extreme), i64::MAX),
            RefreshDecision::Expired
        );
    }

    #[test]
    fn only_the_named_assignment_changes() {
        let text = "# Threads\n\
                    THREADS_ACCESS_TOKEN=old-token\n\
                    THREADS_ACCESS_TOKEN_OLD=older\n\
                    \n\
                    # THREADS_ACCESS_TOKEN=commented\n\
                    MY_THREADS_ACCESS_TOKEN=other\n\
                    THREADS_USER_ID=42\n";
        let expected = "# Threads\n\
                        THREADS_ACCESS_TOKEN=new-token\n\
                        THREADS_ACCESS_TOKEN_OLD=older\n\
                        \n\
                        # THREADS_ACCESS_TOKEN=commented\n\
                        MY_THREADS_ACCESS_TOKEN=other\n\
                        THREADS_USER_ID=42\n";
        assert_eq!(
            replace_env_value(text, "THREADS_ACCESS_TOKEN", "new-token"),
            expected
        );
    }

    #[test]
    fn quoting_export_and_trailing_comments_are_kept() {
        let cases = [
            ("T=\"old\"\n", "T=\"new\"\n"),
            ("T='old'\n", "T='new'\n"),
            ("export T=old\n", "export T=new\n"),
            (
                "export T=\"old\"  # rotated by talon\n",
                "export T=\"new\"  # rotated by talon\n",
            ),
            ("  T = old   # note\n", "  T = new   # note\n"),
            ("T=old#notacomment\n", "T=new\n"),
            ("T='old' # c\n", "T='new' # c\n"),
            ("T=\"o\\\"ld\" # c\n", "T=\"new\" # c\n"),
            ("T=\n", "T=new\n"),
            ("T= # empty\n", "T=new # empty\n"),
            ("T=\"unclosed\n", "T=new\n"),
        ];
        for (before, after) in cases {
            assert_eq!(replace_env_value(before, "T", "new"), after, "{before:?}");
        }
    }

    #[test]
    fn crlf_and_a_missing_final_newline_are_kept() {
        assert_eq!(
            replace_env_value("A=1\r\nT=old\r\nB=2\r\n", "T", "new"),
            "A=1\r\nT=new\r\nB=2\r\n"
        );
        assert_eq!(replace_env_value("A=1\nT=old", "T", "new"), "A=1\nT=new");
        assert_eq!(
            replace_env_value("A=1\r\nT='old'", "T", "new"),
            "A=1\r\nT='new'"
        );
    }

    #[test]
    fn every_duplicate_is_updated() {
        assert_eq!(
            replace_env_value("T=a\nX=1\nexport T=\"b\"\n", "T", "new"),
            "T=new\nX=1\nexport T=\"new\"\n"
        );
    }

    #[test]
    fn a_missing_assignment_is_appended_in_the_file_style() {
        assert_eq!(replace_env_value("", "T", "v"), "T=v\n");
        assert_eq!(replace_env_value("A=1\n", "T", "v"), "A=1\nT=v\n");
        assert_eq!(replace_env_value("A=1", "T", "v"), "A=1\nT=v\n");
        assert_eq!(replace_env_value("A=1\r\n", "T", "v"), "A=1\r\nT=v\r\n");
        assert_eq!(
            replace_env_value("A=1\r\nB=2", "T", "v"),
            "A=1\r\nB=2\r\nT=v\r\n"
        );
        assert_eq!(
            replace_env_value("T_OLD=1\n# T=2\n", "T", "v"),
            "T_OLD=1\n# T=2\nT=v\n"
        );
    }

    #[test]
    fn a_value_the_style_cannot_hold_is_double_quoted() {
        assert_eq!(replace_env_value("T=old\n", "T", "a b"), "T=\"a b\"\n");
        assert_eq!(replace_env_value("T=old\n", "T", "a#b"), "T=\"a#b\"\n");
        assert_eq!(replace_env_value("T='old'\n", "T", "it's"), "T=\"it's\"\n");
        assert_eq!(
            replace_env_value("T=\"old\"\n", "T", "q\"\\\n"),
            "T=\"q\\\"\\\\\\n\"\n"
        );
    }

    /// Whatever the value and the line's style, the parser reads the new
    /// value back and every other pair as it was.
    #[test]
    fn the_parser_reads_back_what_was_written() {
        let styles = [
            "T=old",
            "T=\"old\"",
            "T='old'",
            "export T=old # c",
            "  T = 'old'  # c",
            "T=",
        ];
        let values = [
            "THAAtoken123",
            "with space",
            " lead",
            "hash # inside",
            "#start",
            "quote\"and\\slash",
            "single'quote",
            "multi\nline",
            "",
            "ünïcode",
        ];
        for style in styles {
            for value in values {
                let text = format!("A=1\n{style}\nT_OLD=keep\n# T=x\nB='2'");
                let updated = replace_env_value(&text, "T", value);
                let pairs = parse_dotenv(&updated);
                let get = |name: &str| {
                    pairs
                        .iter()
                        .filter(|(n, _)| n == name)
                        .map(|(_, v)| v.as_str())
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    get("T"),
                    vec![value],
                    "{style:?} with {value:?}: {updated:?}"
                );
                assert_eq!(get("A"), vec!["1"]);
                assert_eq!(get("T_OLD"), vec!["keep"]);
                assert_eq!(get("B"), vec!["2"]);
            }
        }
    }

    #[test]
    fn the_environment_wins_and_empty_values_are_unset() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let dotenv = pairs(&[
            ("THREADS_ACCESS_TOKEN", "from-file"),
            ("THREADS_APP_ID", "app-file"),
            ("THREADS_APP_SECRET", "secret-file"),
            ("THREADS_USER_ID", "user-file"),
        ]);
        let from_file =
            ThreadsCredentials::from_sources(&pairs(&[("THREADS_ACCESS_TOKEN", " ")]), &dotenv)
                .unwrap();
        assert_eq!(from_file.access_token.expose(), "from-file");
        assert_eq!(from_file.source, TokenSource::DotEnv);
        assert_eq!(from_file.app_id.as_deref(), Some("app-file"));
        assert_eq!(from_file.user_id.as_deref(), Some("user-file"));
        assert_eq!(
            from_file.app_secret.as_ref().map(Secret::expose),
            Some("secret-file")
        );

        let env = pairs(&[
            ("THREADS_ACCESS_TOKEN", "from-env"),
            ("THREADS_USER_ID", "u-env"),
        ]);
        let from_env = ThreadsCredentials::from_sources(&env, &dotenv).unwrap();
        assert_eq!(from_env.access_token.expose(), "from-env");
        assert_eq!(from_env.source, TokenSource::Environment);
        assert_eq!(from_env.user_id.as_deref(), Some("u-env"));
        assert_eq!(from_env.app_id.as_deref(), Some("app-file"));
        let shown = format!("{from_env:?}");
        assert!(
            !shown.contains("from-env") && !shown.contains("secret-file"),
            "{shown}"
        );

        let without = pairs(&[("THREADS_ACCESS_TOKEN", ""), ("THREADS_APP_ID", "a")]);
        assert!(ThreadsCredentials::from_sources(&without, &without).is_none());
    }

    #[test]
    fn the_refresh_url_carries_the_token_encoded() {
        let token = Secret::new("TH+AA/x=y&z");
        let url = refresh_url("https://graph.threads.net/", &token).unwrap();
        assert_eq!(url.path(), "/refresh_access_token");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            vec![
                ("grant_type".to_string(), "th_refresh_token".to_string()),
                ("access_token".to_string(), "TH+AA/x=y&z".to_string()),
            ]
        );
        let bad = refresh_url("graph.threads.net", &token).unwrap_err();
        assert!(!bad.to_string().contains("TH+AA"), "{bad}");
        assert!(refresh_url("file:///etc", &token).is_err());
    }

    #[test]
    fn answers_are_read_and_bad_ones_refused() {
        let good = br#"{"access_token":"THAAnew","token_type":"bearer","expires_in":5183944}"#;
        let refreshed = parse_answer(good).unwrap();
        assert_eq!(refreshed.access_token.expose(), "THAAnew");
        assert_eq!(refreshed.token_type.as_deref(), Some("bearer"));
        assert_eq!(refreshed.expires_at_ms(NOW), NOW + 5_183_944_000);
        assert!(!format!("{refreshed:?}").contains("THAAnew"));

        let as_text = parse_answer(br#"{"access_token":"t","expires_in":"60"}"#).unwrap();
        assert_eq!(as_text.expires_in_secs, 60);
        let unsaid = parse_answer(br#"{"access_token":"t"}"#).unwrap();
        assert_eq!(unsaid.expires_in_secs * 1000, TOKEN_LIFETIME_MS);

        for bad in [
            &br#"{"access_token":"","expires_in":60}"#[..],
            br#"{"token_type":"bearer"}"#,
            br#"{"access_token":"t","expires_in":0}"#,
            br#"{"access_token":"t","expires_in":"soon"}"#,
            b"<html>",
        ] {
            assert!(
                matches!(parse_answer(bad), Err(ThreadsError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn meta_error_bodies_are_read_scrubbed_and_classified() {
        let token = Secret::new("THAAsecret");
        let body = br#"{"error":{"message":"Invalid OAuth access token THAAsecret","type":"OAuthException","code":190,"fbtrace_id":"Ab"}}"#;
        let error = refused(400, body, &token);
        assert!(error.is_token_rejected());
        let text = error.to_string();
        assert_eq!(
            text,
            "the Threads API refused the token refresh (HTTP 400, OAuthException code 190): \
             Invalid OAuth access token [redacted]; the token is invalid or expired: renew it \
             with the OAuth flow (see the README)"
        );

        let limited = br#"{"error":{"message":"Application request limit reached","type":"OAuthException","code":4}}"#;
        assert!(!refused(400, limited, &token).is_token_rejected());
        let plain = refused(502, b"Bad Gateway", &token);
        assert!(!plain.is_token_rejected());
        assert_eq!(
            plain.to_string(),
            "the Threads API refused the token refresh (HTTP 502): Bad Gateway"
        );
        let long = "x".repeat(1000);
        let shortened = refused(500, long.as_bytes(), &token).to_string();
        assert!(
            shortened.len() < 500 && shortened.ends_with('…'),
            "{shortened}"
        );
    }

    #[test]
    fn an_expired_error_gives_the_advice_once() {
        let cause = refused(
            400,
            br#"{"error":{"message":"Session has expired","type":"OAuthException","code":190}}"#,
            &Secret::new("t"),
        );
        let error = ThreadsError::Expired {
            expired_on: utc(NOW),
            cause: Box::new(cause),
        };
        let text = error.to_string();
        assert!(
            text.starts_with("the Threads access token expired on 2025-06-15 15:06 UTC; renew it with the OAuth flow (see the README)."),
            "{text}"
        );
        assert!(text.contains("Session has expired"), "{text}");
        assert_eq!(text.matches("renew").count(), 1, "{text}");
    }

    #[test]
    fn the_state_file_format_and_implausible_values() {
        let state = ThreadsState {
            expires_at: NOW,
            refreshed_at: None,
        };
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(
            text,
            format!(r#"{{"expires_at":{NOW},"refreshed_at":null}}"#)
        );
        assert_eq!(parse_state(&text), Some(state));
        assert_eq!(
            parse_state(&format!(r#"{{"expires_at":{NOW},"extra":1}}"#)),
            Some(state)
        );
        assert_eq!(parse_state(r#"{"expires_at":1750000000}"#), None); // seconds
        assert_eq!(parse_state("{"), None);
        assert_eq!(parse_state("[]"), None);
    }

    #[test]
    fn the_status_reads_well_and_shows_no_token() {
        let token = Secret::new("THAAcanary");
        let status =
            ThreadsStatus::from_state(Some(&state_issued_days_ago(52)), NOW, Some(token.clone()));
        assert_eq!(status.days_left, Some(8));
        assert!(!status.expired);
        let text = status.to_string();
        assert_eq!(
            text,
            "Threads token: 8 days left (expires 2025-06-23 15:06 UTC), \
             last refreshed 2025-04-24 15:06 UTC"
        );
        assert!(!format!("{status:?}").contains("THAAcanary"));

        let expired = ThreadsStatus::from_state(Some(&state_issued_days_ago(61)), NOW, None);
        assert!(expired.expired);
        assert_eq!(expired.days_left, Some(0));
        assert!(
            expired.to_string().contains("expired on 2025-06-14"),
            "{expired}"
        );

        let unknown = ThreadsStatus::from_state(None, NOW, Some(token))
            .with_warning(Some("the token refresh failed".into()));
        assert_eq!(
            unknown.to_string(),
            "Threads token: expiry unknown (no refresh has got through yet); \
             warning: the token refresh failed"
        );
    }
}
