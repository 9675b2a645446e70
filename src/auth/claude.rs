//! Claude subscription (OAuth) credentials, as the Claude CLI keeps them in
//! `~/.claude/.credentials.json`: `claudeAiOauth.{accessToken, refreshToken,
//! expiresAt (ms)}` beside fields talon must never drop (`scopes`,
//! `subscriptionType`, …: a peer that dropped `subscriptionType` sent the CLI
//! back to API-key mode).
//!
//! Access tokens live about 8 hours; talon refreshes 5 minutes before expiry
//! by POSTing JSON (form encoding gets a 404, the seeds found) to the token
//! endpoint. Refresh tokens are single use and the CLI on the same machine
//! may refresh too, so [`refresh_file`] takes an advisory lock, re-reads the
//! file and adopts a token someone else already refreshed, and writes back
//! atomically (temp file, fsync, rename, mode 0600) with every other field
//! kept. A kill at any point leaves the old file or the new one.
//!
//! Everything but the HTTP call and the file I/O is a pure function.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::secret::Secret;

pub const DEFAULT_TOKEN_URL: &str = "https://platform.claude.com/v1/oauth/token";
/// Claude Code's public OAuth client, as the seeds use it.
pub const DEFAULT_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
pub const DEFAULT_SCOPE: &str =
    "user:inference user:mcp_servers user:profile user:sessions:claude_code";
/// Refresh when less than this is left (the seeds' host does the same).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} is not a valid credentials file: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "{path} holds no refresh token; sign in again with `claude` (or `claude setup-token`)"
    )]
    NoRefreshToken { path: String },
    #[error("the token endpoint refused the refresh ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("cannot reach the token endpoint: {0}")]
    Unreachable(String),
    #[error("the token endpoint's answer could not be read: {0}")]
    BadAnswer(String),
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

/// The OAuth part of the credentials file. `Debug` shows no token.
#[derive(Clone, PartialEq)]
pub struct OAuthTokens {
    pub access: Secret,
    pub refresh: Option<Secret>,
    /// Unix milliseconds; `None` when the file does not say.
    pub expires_at_ms: Option<i64>,
}

impl std::fmt::Debug for OAuthTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthTokens")
            .field("has_refresh_token", &self.refresh.is_some())
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

impl OAuthTokens {
    /// Still usable at `now_ms` (a token without an expiry is trusted).
    pub fn is_valid(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }

    /// Less than [`REFRESH_MARGIN`] left at `now_ms`.
    pub fn needs_refresh(&self, now_ms: i64) -> bool {
        self.expires_at_ms
            .is_some_and(|at| at - now_ms < REFRESH_MARGIN.as_millis() as i64)
    }

    /// When a refresh should happen (`REFRESH_MARGIN` before expiry).
    pub fn refresh_at_ms(&self) -> Option<i64> {
        self.expires_at_ms
            .map(|at| at - REFRESH_MARGIN.as_millis() as i64)
    }
}

/// The default place: `$HOME/.claude/.credentials.json`.
pub fn default_credentials_file() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| {
            PathBuf::from(home)
                .join(".claude")
                .join(".credentials.json")
        })
}

/// Reads the OAuth tokens of a credentials file's text; `None` when it has
/// no `claudeAiOauth.accessToken` (an API-key-only login, say).
pub fn parse_credentials(text: &str, path: &Path) -> Result<Option<OAuthTokens>, AuthError> {
    let invalid = |message: String| AuthError::Invalid {
        path: path.display().to_string(),
        message,
    };
    let document: Value = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let Some(oauth) = document.get("claudeAiOauth") else {
        return Ok(None);
    };
    let Some(access) = oauth.get("accessToken").and_then(Value::as_str) else {
        return Ok(None);
    };
    if access.is_empty() {
        return Ok(None);
    }
    let refresh = oauth
        .get("refreshToken")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .map(Secret::new);
    let expires_at_ms = match oauth.get("expiresAt") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_i64()
                .or_else(|| value.as_f64().map(|f| f as i64))
                .ok_or_else(|| invalid("claudeAiOauth.expiresAt is not a number".into()))?,
        ),
    };
    Ok(Some(OAuthTokens {
        access: Secret::new(access),
        refresh,
        expires_at_ms,
    }))
}

/// The file's tokens; `None` when the file does not exist or has none.
pub fn read_credentials(path: &Path) -> Result<Option<OAuthTokens>, AuthError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_credentials(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuthError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        }),
    }
}

/// Where to refresh, and as whom.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshSettings {
    pub token_url: String,
    pub client_id: String,
    pub scope: String,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        RefreshSettings {
            token_url: DEFAULT_TOKEN_URL.into(),
            client_id: DEFAULT_CLIENT_ID.into(),
            scope: DEFAULT_SCOPE.into(),
        }
    }
}

/// What a refresh brought. `Debug` shows no token.
#[derive(Clone, PartialEq)]
pub struct Refreshed {
    pub access: Secret,
    /// A new refresh token (they are single use); `None` keeps the old one.
    pub refresh: Option<Secret>,
    pub expires_at_ms: i64,
    pub scope: Option<String>,
}

impl std::fmt::Debug for Refreshed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refreshed")
            .field("new_refresh_token", &self.refresh.is_some())
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    expires_in: i64,
    #[serde(default)]
    scope: Option<String>,
}

/// POSTs the refresh (JSON, as the endpoint wants) and reads the answer.
pub async fn request_refresh(
    client: &reqwest::Client,
    settings: &RefreshSettings,
    refresh_token: &Secret,
    now_ms: i64,
) -> Result<Refreshed, AuthError> {
    let body = serde_json::json!({
        "grant_type": "refresh_token",
        "refresh_token": refresh_token.expose(),
        "client_id": settings.client_id,
        "scope": settings.scope,
    });
    let response = client
        .post(&settings.token_url)
        .json(&body)
        .send()
        .await
        .map_err(|e| AuthError::Unreachable(without_url(&e)))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| AuthError::Unreachable(without_url(&e)))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("error_description")
                    .or_else(|| v.get("error"))
                    .map(|e| match e {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        // A server that echoes the token back must not put it in a log.
        let message = message.replace(refresh_token.expose(), "[redacted]");
        return Err(AuthError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    let answer: TokenAnswer =
        serde_json::from_slice(&bytes).map_err(|e| AuthError::BadAnswer(e.to_string()))?;
    Ok(Refreshed {
        access: Secret::new(answer.access_token),
        refresh: answer
            .refresh_token
            .filter(|r| !r.is_empty())
            .map(Secret::new),
        expires_at_ms: now_ms.saturating_add(answer.expires_in.saturating_mul(1000)),
        scope: answer.scope,
    })
}

fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(&format!(" ({url})"), "");
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{text}: {source}"),
        None => text,
    }
}

/// The credentials file's text with the refreshed tokens in it and every
/// other field, at every level, exactly as it was.
pub fn updated_file(text: &str, refreshed: &Refreshed, path: &Path) -> Result<String, AuthError> {
    let mut document: Value = serde_json::from_str(text).map_err(|e| AuthError::Invalid {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let Some(root) = document.as_object_mut() else {
        return Err(AuthError::Invalid {
            path: path.display().to_string(),
            message: "not a JSON object".into(),
        });
    };
    let oauth = root
        .entry("claudeAiOauth")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(oauth) = oauth.as_object_mut() else {
        return Err(AuthError::Invalid {
            path: path.display().to_string(),
            message: "claudeAiOauth is not an object".into(),
        });
    };
    oauth.insert("accessToken".into(), refreshed.access.expose().into());
    if let Some(refresh) = &refreshed.refresh {
        oauth.insert("refreshToken".into(), refresh.expose().into());
    }
    oauth.insert("expiresAt".into(), refreshed.expires_at_ms.into());
    if let Some(scope) = &refreshed.scope {
        let scopes: Vec<Value> = scope.split_whitespace().map(Value::from).collect();
        oauth.insert("scopes".into(), Value::Array(scopes));
    }
    serde_json::to_string(&document).map_err(|e| AuthError::Invalid {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The advisory lock beside the file, held while refreshing.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}

/// How a refresh of the file ended.
#[derive(Debug, Clone, PartialEq)]
pub enum FileRefresh {
    /// We refreshed and wrote the file.
    Refreshed(OAuthTokens),
    /// Someone else (the Claude CLI, another talon) already had: adopted.
    Adopted(OAuthTokens),
}

impl FileRefresh {
    pub fn tokens(&self) -> &OAuthTokens {
        match self {
            FileRefresh::Refreshed(t) | FileRefresh::Adopted(t) => t,
        }
    }
}

/// Refreshes the tokens in `path` unless someone else already did: under
/// the file's advisory lock, re-reads it; a token there that differs from
/// `ours` and does not need a refresh is adopted; otherwise the file's own
/// (newest) refresh token is spent and the answer written back atomically.
pub async fn refresh_file(
    path: &Path,
    client: &reqwest::Client,
    settings: &RefreshSettings,
    ours: Option<&OAuthTokens>,
    now_ms: impl Fn() -> i64,
) -> Result<FileRefresh, AuthError> {
    let lock_file = lock_path(path);
    let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_file)?;
        fs4::FileExt::lock(&file)?;
        Ok(file)
    })
    .await
    .map_err(|e| AuthError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    })?
    .map_err(|e| AuthError::Write {
        path: lock_path(path).display().to_string(),
        message: e.to_string(),
    })?;
    let text = std::fs::read_to_string(path).map_err(|e| AuthError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let current = parse_credentials(&text, path)?.ok_or_else(|| AuthError::NoRefreshToken {
        path: path.display().to_string(),
    })?;
    let theirs = ours.is_some_and(|o| o.access != current.access);
    if theirs && !current.needs_refresh(now_ms()) {
        drop(lock);
        return Ok(FileRefresh::Adopted(current));
    }
    let refresh_token = current
        .refresh
        .clone()
        .ok_or_else(|| AuthError::NoRefreshToken {
            path: path.display().to_string(),
        })?;
    let refreshed = request_refresh(client, settings, &refresh_token, now_ms()).await?;
    let new_text = updated_file(&text, &refreshed, path)?;
    crate::safe_fs::write_atomically(path, new_text.as_bytes(), 0o600).map_err(|e| {
        AuthError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    })?;
    drop(lock);
    Ok(FileRefresh::Refreshed(OAuthTokens {
        access: refreshed.access,
        refresh: refreshed.refresh.or(Some(refresh_token)),
        expires_at_ms: Some(refreshed.expires_at_ms),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-old","refreshToken":"sk-ant-ort01-old","expiresAt":1700000000000,"scopes":["user:inference"],"subscriptionType":"pro","rateLimitTier":"default_claude_max_5x"},"otherTool":{"keep":true}}"#;

    fn path() -> PathBuf {
        PathBuf::from("/h/.claude/.credentials.json")
    }

    #[test]
    fn the_file_is_read_and_debug_shows_no_token() {
        let tokens = parse_credentials(FILE, &path()).unwrap().unwrap();
        assert_eq!(tokens.access.expose(), "sk-ant-oat01-old");
        assert_eq!(
            tokens.refresh.as_ref().unwrap().expose(),
            "sk-ant-ort01-old"
        );
        assert_eq!(tokens.expires_at_ms, Some(1_700_000_000_000));
        let shown = format!("{tokens:?}");
        assert!(!shown.contains("sk-ant"), "{shown}");
        assert_eq!(parse_credentials("{}", &path()).unwrap(), None);
        assert!(parse_credentials("{not json", &path()).is_err());
        let bad = r#"{"claudeAiOauth":{"accessToken":"a","expiresAt":"soon"}}"#;
        assert!(parse_credentials(bad, &path()).is_err());
    }

    #[test]
    fn refresh_is_due_five_minutes_before_expiry() {
        let tokens = parse_credentials(FILE, &path()).unwrap().unwrap();
        let at = 1_700_000_000_000;
        assert!(!tokens.needs_refresh(at - 6 * 60_000));
        assert!(tokens.needs_refresh(at - 4 * 60_000));
        assert!(tokens.is_valid(at - 1));
        assert!(!tokens.is_valid(at));
        assert_eq!(tokens.refresh_at_ms(), Some(at - 5 * 60_000));
    }

    #[test]
    fn an_update_keeps_every_other_field() {
        let refreshed = Refreshed {
            access: Secret::new("sk-ant-oat01-new"),
            refresh: Some(Secret::new("sk-ant-ort01-new")),
            expires_at_ms: 1_800_000_000_000,
            scope: None,
        };
        let text = updated_file(FILE, &refreshed, &path()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let o = &v["claudeAiOauth"];
        assert_eq!(o["accessToken"], "sk-ant-oat01-new");
        assert_eq!(o["refreshToken"], "sk-ant-ort01-new");
        assert_eq!(o["expiresAt"], 1_800_000_000_000_i64);
        assert_eq!(o["subscriptionType"], "pro");
        assert_eq!(o["rateLimitTier"], "default_claude_max_5x");
        assert_eq!(o["scopes"], serde_json::json!(["user:inference"]));
        assert_eq!(v["otherTool"]["keep"], true);
        // Without a new refresh token the old one stays.
        let no_new = Refreshed {
            refresh: None,
            scope: Some("a b".into()),
            ..refreshed
        };
        let v: Value =
            serde_json::from_str(&updated_file(FILE, &no_new, &path()).unwrap()).unwrap();
        assert_eq!(v["claudeAiOauth"]["refreshToken"], "sk-ant-ort01-old");
        assert_eq!(v["claudeAiOauth"]["scopes"], serde_json::json!(["a", "b"]));
    }

    #[test]
    fn the_lock_lives_beside_the_file() {
        assert_eq!(
            lock_path(&path()),
            PathBuf::from("/h/.claude/.credentials.json.lock")
        );
    }
}
