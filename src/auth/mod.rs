//! Credentials the host refreshes on its own: the Claude subscription (OAuth)
//! and the Threads long-lived token. The token-manager actor drives them.

pub mod claude;
pub mod threads;
