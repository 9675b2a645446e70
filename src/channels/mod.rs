//! Platform channels: what the Slack and Discord adapters share, and each
//! platform's own code.
//!
//! A platform is two narrow halves. *Ingress* ([`Platform::serve`]) keeps a
//! connection to the platform, turns its events into inbound messages for
//! the router and reports its health; *delivery* ([`delivery::Poster`])
//! posts one message part to one chat. The actor that owns both, one per
//! platform, is [`crate::actors::platform`]; decisions live here as pure
//! functions (splitting, crash-loop backoff, failure classification, event
//! normalisation).

pub mod crash_backoff;
pub mod delivery;
pub mod discord;
pub mod slack;
pub mod split;

use std::future::Future;
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::watch;

use crate::actors::router::{RouterMsg, ROUTER};
use crate::messages::channel::{ChannelMsg, ConnectionEvent};
use crate::messages::InboundMessage;

/// One chat platform, as the platform channel actor drives it.
pub trait Platform: Send + Sync + 'static {
    type Poster: delivery::Poster;

    /// The platform's name in logs and the crash ledger: `slack`, `discord`.
    fn name(&self) -> &'static str;

    /// The prefix of its chat ids: `slack`, `dc`.
    fn prefix(&self) -> &'static str;

    /// The delivery half.
    fn poster(&self) -> std::sync::Arc<Self::Poster>;

    /// Connects and serves ingress until `stop` turns true, reporting
    /// through `report`. Returns once the platform library has shut down.
    fn serve(
        &self,
        report: Reporter,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send;

    /// Shows "typing…" in `chat` (platform chat id) for a few seconds, if
    /// the platform has such a thing.
    fn typing(
        &self,
        _chat: &str,
    ) -> impl Future<Output = Result<(), delivery::SendFailure>> + Send {
        async { Ok(()) }
    }

    /// How often [`Platform::typing`] must be repeated to keep it shown;
    /// `None` if the platform shows none.
    fn typing_refresh(&self) -> Option<Duration> {
        None
    }
}

/// How a connection task talks to its actor.
#[derive(Clone)]
pub struct Reporter {
    actor: ActorRef<ChannelMsg>,
}

impl Reporter {
    pub fn new(actor: ActorRef<ChannelMsg>) -> Reporter {
        Reporter { actor }
    }

    pub fn report(&self, event: ConnectionEvent) {
        if let Err(e) = self.actor.cast(ChannelMsg::Connection(event)) {
            tracing::debug!(error = %e, "channel actor gone; connection event dropped");
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone). Holds no borrow
/// across an await, so futures using it stay `Send`.
pub async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        let stopped = *stop.borrow_and_update();
        if stopped || stop.changed().await.is_err() {
            return;
        }
    }
}

/// Hands a message to the router, waiting out a router restart (up to 30 s)
/// rather than dropping it.
pub async fn submit_to_router(message: InboundMessage) {
    let mut message = Some(message);
    for _ in 0..600 {
        if let Some(router) = ractor::registry::where_is(ROUTER) {
            if let Some(m) = message.take() {
                match router.send_message(RouterMsg::Inbound(m)) {
                    Ok(()) => return,
                    Err(ractor::MessagingErr::SendErr(RouterMsg::Inbound(m))) => message = Some(m),
                    Err(_) => return,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::error!("the router did not come back within 30 s; an inbound message was dropped");
}

/// Remembers recently seen keys (bounded, oldest forgotten first): event
/// ids of platforms that redeliver, outbox ids handed over twice.
#[derive(Debug)]
pub struct RecentKeys<K> {
    set: std::collections::HashSet<K>,
    order: std::collections::VecDeque<K>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Clone> RecentKeys<K> {
    pub fn new(capacity: usize) -> RecentKeys<K> {
        RecentKeys {
            set: Default::default(),
            order: Default::default(),
            capacity: capacity.max(1),
        }
    }

    /// True the first time `key` is seen (within the remembered window).
    pub fn first_time(&mut self, key: K) -> bool {
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub fn contains(&self, key: &K) -> bool {
        self.set.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keys_forget_the_oldest() {
        let mut keys = RecentKeys::new(2);
        assert!(keys.first_time("a"));
        assert!(!keys.first_time("a"));
        assert!(keys.first_time("b"));
        assert!(keys.first_time("c"));
        assert!(keys.first_time("a"), "a was forgotten");
        assert!(!keys.first_time("c"));
    }
}
