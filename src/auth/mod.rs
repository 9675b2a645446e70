//! Credentials the host refreshes on its own: the Claude subscription (OAuth)
//! and the Threads long-lived token. The token-manager actor drives them;
//! the functions here say, from the configuration alone, what it starts
//! from and which credential a host would use now (for doctor and status).

pub mod claude;
pub mod threads;

use std::path::PathBuf;

use crate::config::Config;

/// The credentials file the configuration names (or the CLI's default).
pub fn credentials_file(config: &Config) -> Option<PathBuf> {
    config
        .auth
        .credentials_file
        .as_ref()
        .map(PathBuf::from)
        .or_else(crate::auth::claude::default_credentials_file)
}

/// Which credential a host with this configuration would use now, and how
/// long an OAuth token from the file has left (for doctor and status; the
/// running host asks its token manager).
pub fn credential_in_use(config: &Config) -> (Kind, Option<i64>) {
    let file_tokens = credentials_file(config)
        .and_then(|path| crate::auth::claude::read_credentials(&path).ok().flatten());
    let now = crate::store::now_millis();
    let s = &config.secrets;
    let kind = choose(Available {
        file_token_valid: file_tokens.as_ref().is_some_and(|t| t.is_valid(now)),
        file_configured: file_tokens.is_some(),
        env_oauth: s.claude_oauth_token.is_some(),
        api_key: s.anthropic_api_key.is_some(),
        fallback_key: s.anthropic_api_key_fallback.is_some(),
        exhausted: false,
    });
    // An expired token that can be refreshed is still the subscription.
    let refreshable = file_tokens.as_ref().is_some_and(|t| t.refresh.is_some());
    let kind = match kind {
        Kind::FallbackKey | Kind::None if refreshable => Kind::OAuthFile,
        other => other,
    };
    (kind, file_tokens.and_then(|t| t.expires_at_ms))
}

/// The credential a host with this configuration would send now (for the
/// doctor's one proving call; the running host asks its token manager).
pub fn credential_now(config: &Config) -> Option<crate::provider::Credential> {
    use crate::provider::Credential;
    let s = &config.secrets;
    let file_token = credentials_file(config)
        .and_then(|path| crate::auth::claude::read_credentials(&path).ok().flatten())
        .filter(|t| t.is_valid(crate::store::now_millis()));
    match credential_in_use(config).0 {
        Kind::OAuthFile => file_token.map(|t| Credential::OAuthToken(t.access)),
        Kind::OAuthEnv => s.claude_oauth_token.clone().map(Credential::OAuthToken),
        Kind::ApiKey => s.anthropic_api_key.clone().map(Credential::ApiKey),
        Kind::FallbackKey => s
            .anthropic_api_key_fallback
            .clone()
            .or_else(|| s.anthropic_api_key.clone())
            .map(Credential::ApiKey),
        Kind::None => None,
    }
}

/// Which credential is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The subscription, from the credentials file (refreshed).
    OAuthFile,
    /// The subscription, from `CLAUDE_CODE_OAUTH_TOKEN` (no refresh).
    OAuthEnv,
    /// `ANTHROPIC_API_KEY` with no OAuth credential configured.
    ApiKey,
    /// The prepaid fallback key, because no valid OAuth token exists.
    FallbackKey,
    None,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::OAuthFile => "oauth (credentials file)",
            Kind::OAuthEnv => "oauth (CLAUDE_CODE_OAUTH_TOKEN)",
            Kind::ApiKey => "api key",
            Kind::FallbackKey => "fallback key",
            Kind::None => "none",
        }
    }
}

/// What is configured, as [`choose`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Available {
    pub file_token_valid: bool,
    pub file_configured: bool,
    pub env_oauth: bool,
    pub api_key: bool,
    pub fallback_key: bool,
    /// The subscription hit its usage limit recently.
    pub exhausted: bool,
}

/// Exactly one credential, OAuth first (SPEC §9).
pub fn choose(a: Available) -> Kind {
    if !a.exhausted {
        if a.file_token_valid {
            return Kind::OAuthFile;
        }
        if a.env_oauth {
            return Kind::OAuthEnv;
        }
    }
    let oauth_configured = a.file_configured || a.env_oauth;
    if a.fallback_key || (a.api_key && oauth_configured) {
        return Kind::FallbackKey;
    }
    if a.api_key {
        return Kind::ApiKey;
    }
    Kind::None
}

/// "OAuth: valid, 6.2 h left" (or expired), for doctor and status.
pub fn describe_expiry(expires_at_ms: Option<i64>, now_ms: i64) -> String {
    match expires_at_ms {
        None => "OAuth: valid (no expiry given)".into(),
        Some(at) if at > now_ms => {
            let hours = (at - now_ms) as f64 / 3_600_000.0;
            format!("OAuth: valid, {hours:.1} h left")
        }
        Some(_) => "OAuth: expired; refreshed at the next model call".into(),
    }
}
