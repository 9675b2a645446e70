//! Where a provider gets its credential: asked for every call, never
//! fixed at start (SPEC §9). The host's source is the token-manager actor
//! ([`crate::actors::token_manager`]); a fixed credential serves tools and
//! tests that talk to a provider directly.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::Credential;

/// Asked by the provider for each call, and told when a credential failed.
pub trait CredentialSource: Send + Sync + 'static {
    /// The one credential to use now; `None` when there is none.
    fn current(&self) -> BoxFuture<'_, Option<Credential>>;

    /// `credential` was refused (401): force one refresh; the credential
    /// to retry with, or `None` when there is nothing better.
    fn rejected(&self, credential: Credential) -> BoxFuture<'_, Option<Credential>> {
        let _ = credential;
        Box::pin(async { None })
    }

    /// The subscription's usage limit was reached with `credential`: the
    /// fallback key to retry with, if there is one.
    fn exhausted(&self, credential: Credential) -> BoxFuture<'_, Option<Credential>> {
        let _ = credential;
        Box::pin(async { None })
    }
}

/// One credential, always.
impl CredentialSource for Credential {
    fn current(&self) -> BoxFuture<'_, Option<Credential>> {
        let credential = self.clone();
        Box::pin(async move { Some(credential) })
    }
}

/// A shared source, as providers hold it.
pub type SharedCredentials = Arc<dyn CredentialSource>;

impl From<Credential> for SharedCredentials {
    fn from(credential: Credential) -> Self {
        Arc::new(credential)
    }
}
