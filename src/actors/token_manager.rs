//! The token manager (SPEC §9): the one place any provider gets a
//! credential from, asked for every model call.
//!
//! Exactly one credential is used, OAuth first: a valid Claude subscription
//! token from the CLI's credentials file (refreshed 5 minutes before it
//! expires) or `CLAUDE_CODE_OAUTH_TOKEN` (long-lived, no refresh); else the
//! fallback key (`ANTHROPIC_API_KEY_FALLBACK`, or a plain `ANTHROPIC_API_KEY`
//! beside an OAuth credential, which then counts only as the fallback). The
//! seeds' mistake — an API key silently overriding the subscription and
//! burning prepaid credit — cannot happen: the choice is [`choose`], a pure
//! function, and falling back is a warning in the log and one notice to the
//! main chat. OAuth is used again as soon as a refresh succeeds.
//!
//! Single flight comes from the actor itself: a refresh runs inside one
//! message, so however many calls arrive at expiry, they wait in the
//! mailbox for that one refresh and then all get its token. A failed refresh
//! is retried with backoff while the token is still valid. A 401 on an OAuth
//! token forces one refresh ([`TokenMsg::Rejected`]); a spent subscription
//! switches to the fallback key ([`TokenMsg::Exhausted`]).
//!
//! Its state is in the SIGUSR1 dump — kind in use, expiry, refreshes,
//! failures — never a token.

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;

use crate::auth::claude::{self, OAuthTokens, RefreshSettings};
pub use crate::auth::{choose, describe_expiry, Available, Kind};
use crate::provider::{Credential, CredentialSource};
use crate::secret::Secret;
use crate::store::Store;

/// The actor's registry name.
pub const TOKEN_MANAGER: &str = "token-manager";

/// How long a model call waits for the token manager (a refresh included).
const ASK_LIMIT: Duration = Duration::from_secs(60);

/// After a usage-limit refusal the subscription is left alone this long
/// (or until a refresh succeeds), on the fallback key.
const EXHAUSTED_FOR: Duration = Duration::from_secs(3600);

/// Delay before refresh retry `failures` (1-based): base · 2^(n-1), ≤ 10 min.
pub fn refresh_backoff(base: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(Duration::from_secs(600))
}

/// Everything the token manager starts from.
#[derive(Clone)]
pub struct TokenManagerArgs {
    /// The credentials file; `None` when there is no home to find it in.
    pub credentials_file: Option<PathBuf>,
    pub refresh: RefreshSettings,
    pub retry_base: Duration,
    pub env_oauth: Option<Secret>,
    pub api_key: Option<Secret>,
    pub fallback_key: Option<Secret>,
    pub store: Store,
    pub client: reqwest::Client,
    /// Where `.env` and `data/threads-token-state.json` are.
    pub paths: crate::paths::Paths,
    pub threads: crate::auth::threads::ThreadsSettings,
}

pub enum TokenMsg {
    /// The credential for a call now.
    Current(RpcReplyPort<Option<Credential>>),
    /// This OAuth credential got a 401: refresh once, answer what to retry with.
    Rejected(Credential, RpcReplyPort<Option<Credential>>),
    /// The subscription's usage limit: answer the fallback key, if any.
    Exhausted(Credential, RpcReplyPort<Option<Credential>>),
    /// A timer: refresh ahead of expiry, or retry a failed refresh.
    RefreshDue,
    /// Before a container start of a group that is given the Threads token:
    /// refresh it if due; an expired one is an error to say.
    ThreadsFresh(RpcReplyPort<Result<(), String>>),
    Inspect(RpcReplyPort<serde_json::Value>),
}

pub struct TokenState {
    args: TokenManagerArgs,
    tokens: Option<OAuthTokens>,
    in_use: Kind,
    failures: u32,
    last_refresh_ms: Option<i64>,
    next_refresh_ms: Option<i64>,
    /// No refresh attempt before this (backoff after a failure).
    retry_not_before_ms: Option<i64>,
    exhausted_until_ms: Option<i64>,
    last_error: Option<String>,
}

fn now_ms() -> i64 {
    crate::store::now_millis()
}

pub struct TokenManager;

impl TokenManager {
    fn available(state: &TokenState, now: i64) -> Available {
        Available {
            file_token_valid: state.tokens.as_ref().is_some_and(|t| t.is_valid(now)),
            file_configured: state.tokens.is_some(),
            env_oauth: state.args.env_oauth.is_some(),
            api_key: state.args.api_key.is_some(),
            fallback_key: state.args.fallback_key.is_some(),
            exhausted: state.exhausted_until_ms.is_some_and(|until| until > now),
        }
    }

    fn credential_of(state: &TokenState, kind: Kind) -> Option<Credential> {
        let a = &state.args;
        match kind {
            Kind::OAuthFile => state
                .tokens
                .as_ref()
                .map(|t| Credential::OAuthToken(t.access.clone())),
            Kind::OAuthEnv => a.env_oauth.clone().map(Credential::OAuthToken),
            Kind::ApiKey => a.api_key.clone().map(Credential::ApiKey),
            Kind::FallbackKey => a
                .fallback_key
                .clone()
                .or_else(|| a.api_key.clone())
                .map(Credential::ApiKey),
            Kind::None => None,
        }
    }

    /// Re-reads the credentials file (the CLI may have refreshed it).
    fn reload(state: &mut TokenState) {
        let Some(path) = &state.args.credentials_file else {
            return;
        };
        match claude::read_credentials(path) {
            Ok(tokens) => state.tokens = tokens,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the Claude credentials file");
                state.last_error = Some(e.to_string());
            }
        }
    }

    /// Refreshes now if the file's token needs it (or `force`) and no
    /// backoff forbids it. Runs inside one message: single flight.
    async fn refresh_if_due(state: &mut TokenState, myself: &ActorRef<TokenMsg>, force: bool) {
        let now = now_ms();
        let (Some(path), Some(tokens)) = (state.args.credentials_file.clone(), &state.tokens)
        else {
            return;
        };
        if !force && !tokens.needs_refresh(now) {
            return;
        }
        if !force && state.retry_not_before_ms.is_some_and(|t| t > now) {
            return;
        }
        let ours = tokens.clone();
        let result = claude::refresh_file(
            &path,
            &state.args.client,
            &state.args.refresh,
            Some(&ours),
            now_ms,
        )
        .await;
        match result {
            Ok(done) => {
                let adopted = matches!(done, claude::FileRefresh::Adopted(_));
                state.tokens = Some(done.tokens().clone());
                state.failures = 0;
                state.retry_not_before_ms = None;
                state.exhausted_until_ms = None;
                state.last_error = None;
                state.last_refresh_ms = Some(now_ms());
                tracing::info!(adopted, "Claude OAuth token refreshed");
                Self::schedule_refresh(state, myself);
            }
            Err(e) => {
                state.failures += 1;
                let delay = refresh_backoff(state.args.retry_base, state.failures);
                state.retry_not_before_ms = Some(now_ms() + delay.as_millis() as i64);
                state.next_refresh_ms = state.retry_not_before_ms;
                state.last_error = Some(e.to_string());
                tracing::warn!(error = %e, failures = state.failures, retry_in_ms = delay.as_millis() as u64,
                    "Claude OAuth refresh failed; retrying");
                myself.send_after(delay, || TokenMsg::RefreshDue);
            }
        }
    }

    /// A timer for the next refresh, 5 minutes before expiry.
    fn schedule_refresh(state: &mut TokenState, myself: &ActorRef<TokenMsg>) {
        let Some(at) = state.tokens.as_ref().and_then(OAuthTokens::refresh_at_ms) else {
            state.next_refresh_ms = None;
            return;
        };
        state.next_refresh_ms = Some(at);
        let delay = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
        myself.send_after(delay, || TokenMsg::RefreshDue);
    }

    /// Picks the credential, telling the log (and once the main chat) when
    /// the choice falls back to the prepaid key or returns to OAuth.
    fn pick(state: &mut TokenState) -> Option<Credential> {
        let kind = choose(Self::available(state, now_ms()));
        if kind != state.in_use {
            let oauth_configured = state.tokens.is_some() || state.args.env_oauth.is_some();
            match kind {
                Kind::FallbackKey if oauth_configured => {
                    tracing::warn!(reason = ?state.last_error, "using the fallback prepaid API key: no valid Claude OAuth token");
                    notify_main(
                        &state.args.store,
                        "⚠️ talon is using the fallback prepaid API key: the Claude subscription token is not usable right now. It switches back as soon as a refresh succeeds.",
                    );
                }
                Kind::OAuthFile | Kind::OAuthEnv if state.in_use == Kind::FallbackKey => {
                    tracing::info!("using the Claude subscription (OAuth) again");
                }
                _ => {}
            }
            state.in_use = kind;
        }
        Self::credential_of(state, kind)
    }
}

/// One line to the main group's chat.
fn notify_main(store: &Store, text: &str) {
    let main = store
        .groups()
        .ok()
        .and_then(|groups| groups.into_iter().find(|g| g.is_main));
    let Some(main) = main else {
        return;
    };
    match store.record_notice(&main.chat_id, &main.folder, text) {
        Ok(row) => crate::actors::group_queue::deliver_row(row),
        Err(e) => tracing::warn!(error = %e, "cannot record a notice"),
    }
}

impl Actor for TokenManager {
    type Msg = TokenMsg;
    type State = TokenState;
    type Arguments = TokenManagerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: TokenManagerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        crate::dump::register_inspectable(&myself, "token-manager", TokenMsg::Inspect);
        let mut state = TokenState {
            args,
            tokens: None,
            in_use: Kind::None,
            failures: 0,
            last_refresh_ms: None,
            next_refresh_ms: None,
            retry_not_before_ms: None,
            exhausted_until_ms: None,
            last_error: None,
        };
        Self::reload(&mut state);
        Self::schedule_refresh(&mut state, &myself);
        // Through `pick`, so a start on the fallback key is told too.
        Self::pick(&mut state);
        tracing::info!(
            credential = state.in_use.describe(),
            "token manager started"
        );
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TokenMsg::Current(reply) => {
                let now = now_ms();
                let stale = state.tokens.as_ref().is_some_and(|t| t.needs_refresh(now));
                if stale {
                    // Someone else may have refreshed it already.
                    Self::reload(state);
                    Self::refresh_if_due(state, &myself, false).await;
                }
                let _ = reply.send(Self::pick(state));
            }
            TokenMsg::Rejected(credential, reply) => {
                let from_file = matches!(&credential, Credential::OAuthToken(t)
                    if state.tokens.as_ref().is_some_and(|ours| &ours.access == t));
                if from_file {
                    Self::reload(state);
                    let changed = state
                        .tokens
                        .as_ref()
                        .is_some_and(|t| Credential::OAuthToken(t.access.clone()) != credential);
                    if !changed {
                        Self::refresh_if_due(state, &myself, true).await;
                    }
                    let refreshed = state
                        .tokens
                        .as_ref()
                        .map(|t| Credential::OAuthToken(t.access.clone()))
                        .filter(|fresh| *fresh != credential);
                    if let Some(fresh) = refreshed {
                        let _ = reply.send(Some(fresh));
                        return Ok(());
                    }
                    // A token the API refuses is not valid, whatever its expiry says.
                    if let Some(tokens) = state.tokens.as_mut() {
                        tokens.expires_at_ms = Some(now_ms());
                    }
                } else if matches!(credential, Credential::OAuthToken(_)) {
                    // CLAUDE_CODE_OAUTH_TOKEN was refused: nothing to refresh.
                    state.exhausted_until_ms = Some(i64::MAX);
                    state.last_error = Some("CLAUDE_CODE_OAUTH_TOKEN was refused (401)".into());
                }
                let next = Self::pick(state).filter(|c| *c != credential);
                let _ = reply.send(next);
            }
            TokenMsg::Exhausted(credential, reply) => {
                tracing::warn!("the Claude subscription's usage limit is reached");
                state.exhausted_until_ms = Some(now_ms() + EXHAUSTED_FOR.as_millis() as i64);
                state.last_error = Some("the subscription's usage limit is reached".into());
                let next = Self::pick(state).filter(|c| *c != credential);
                let _ = reply.send(next);
            }
            TokenMsg::RefreshDue => {
                Self::reload(state);
                Self::refresh_if_due(state, &myself, false).await;
                Self::pick(state);
            }
            TokenMsg::ThreadsFresh(reply) => {
                let checked = crate::auth::threads::ensure_fresh(
                    &state.args.paths,
                    &state.args.threads,
                    &state.args.client,
                    now_ms(),
                )
                .await;
                let answer = match checked {
                    Ok(status) if status.expired => Err(status.to_string()),
                    Ok(status) => {
                        if let Some(warning) = &status.warning {
                            tracing::warn!(%warning, "Threads token");
                        }
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = reply.send(answer);
            }
            TokenMsg::Inspect(reply) => {
                let now = now_ms();
                let expires_in_s = match state.in_use {
                    Kind::OAuthFile => state
                        .tokens
                        .as_ref()
                        .and_then(|t| t.expires_at_ms)
                        .map(|at| (at - now) / 1000),
                    _ => None,
                };
                let _ = reply.send(json!({
                    "credential": state.in_use.describe(),
                    "expires_in_s": expires_in_s,
                    "last_refresh_ms": state.last_refresh_ms,
                    "next_refresh_ms": state.next_refresh_ms,
                    "consecutive_failures": state.failures,
                    "last_error": state.last_error,
                    "credentials_file": state.args.credentials_file.as_ref().map(|p| p.display().to_string()),
                    "threads": crate::auth::threads::inspect(&state.args.paths, now)
                        .ok()
                        .filter(|s| s.expires_at_ms.is_some())
                        .map(|s| s.to_string()),
                }));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        crate::dump::unregister(&myself.get_cell());
        Ok(())
    }
}

/// Refreshes the Threads token if due before a container start that passes
/// it; `Err` says why the token cannot be used. Without a running token
/// manager there is nothing to check with, and the start goes on.
pub async fn threads_ready() -> Result<(), String> {
    let Some(actor) = manager() else {
        return Ok(());
    };
    match ractor::call_t!(actor, TokenMsg::ThreadsFresh, ASK_LIMIT.as_millis() as u64) {
        Ok(answer) => answer,
        Err(e) => Err(format!("the token manager did not answer: {e}")),
    }
}

/// What providers hold: asks the running token manager for each call.
#[derive(Debug, Default, Clone, Copy)]
pub struct FromTokenManager;

fn manager() -> Option<ActorRef<TokenMsg>> {
    ractor::registry::where_is(TOKEN_MANAGER).map(Into::into)
}

async fn ask(
    make: impl FnOnce(RpcReplyPort<Option<Credential>>) -> TokenMsg,
) -> Option<Credential> {
    let actor = manager()?;
    match ractor::call_t!(actor, make, ASK_LIMIT.as_millis() as u64) {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(error = %e, "the token manager did not answer");
            None
        }
    }
}

impl CredentialSource for FromTokenManager {
    fn current(&self) -> BoxFuture<'_, Option<Credential>> {
        Box::pin(ask(TokenMsg::Current))
    }

    fn rejected(&self, credential: Credential) -> BoxFuture<'_, Option<Credential>> {
        Box::pin(ask(move |reply| TokenMsg::Rejected(credential, reply)))
    }

    fn exhausted(&self, credential: Credential) -> BoxFuture<'_, Option<Credential>> {
        Box::pin(ask(move |reply| TokenMsg::Exhausted(credential, reply)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Available {
        Available {
            file_token_valid: false,
            file_configured: false,
            env_oauth: false,
            api_key: false,
            fallback_key: false,
            exhausted: false,
        }
    }

    #[test]
    fn oauth_comes_first_and_exactly_one_credential_is_chosen() {
        let both = Available {
            file_token_valid: true,
            file_configured: true,
            api_key: true,
            fallback_key: true,
            ..none()
        };
        assert_eq!(choose(both), Kind::OAuthFile);
        let env = Available {
            env_oauth: true,
            api_key: true,
            ..none()
        };
        assert_eq!(choose(env), Kind::OAuthEnv);
        // The seeds' setup with an expired token and no refresh: the fallback.
        let expired = Available {
            file_configured: true,
            fallback_key: true,
            ..none()
        };
        assert_eq!(choose(expired), Kind::FallbackKey);
        // A plain key next to OAuth is only the fallback.
        let plain = Available {
            file_configured: true,
            api_key: true,
            ..none()
        };
        assert_eq!(choose(plain), Kind::FallbackKey);
        assert_eq!(
            choose(Available {
                api_key: true,
                ..none()
            }),
            Kind::ApiKey
        );
        assert_eq!(choose(none()), Kind::None);
        // A spent subscription uses the key, and OAuth again when it clears.
        let spent = Available {
            exhausted: true,
            ..both
        };
        assert_eq!(choose(spent), Kind::FallbackKey);
    }

    #[test]
    fn expiry_is_said_in_hours() {
        let now = 1_000_000_000;
        assert_eq!(
            describe_expiry(Some(now + 22_320_000), now),
            "OAuth: valid, 6.2 h left"
        );
        assert!(describe_expiry(Some(now - 1), now).contains("expired"));
    }

    #[test]
    fn refresh_backoff_doubles_to_ten_minutes() {
        let base = Duration::from_secs(30);
        let waits: Vec<u64> = (1..=7)
            .map(|n| refresh_backoff(base, n).as_secs())
            .collect();
        assert_eq!(waits, vec![30, 60, 120, 240, 480, 600, 600]);
    }
}
