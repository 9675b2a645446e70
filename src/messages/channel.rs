//! The contract every channel actor (terminal, socket, Slack, Discord) answers.
//!
//! Inbound, a channel normalises platform events into
//! [`crate::messages::InboundMessage`] and casts them to the router. Outbound,
//! it receives these messages; delivering an outbox row includes marking it
//! sent, so a reply is never lost between the store and the platform.

use crate::store::OutboxRow;

/// The registry name of a channel actor: `channel:<prefix>` where the prefix
/// is the chat id's (`term`, `slack`, `dc`).
pub fn channel_name(prefix: &str) -> String {
    format!("channel:{prefix}")
}

pub enum ChannelMsg {
    /// Send this row to its chat, then mark it sent in the store.
    Deliver(OutboxRow),
    /// The group's agent started working on a chat's messages (a platform
    /// may show a typing indicator until they are settled).
    Working {
        chat_id: String,
    },
    /// The agent finished with a chat's messages through `through_seq`
    /// (answered, or given up on with a notice).
    Settled {
        chat_id: String,
        through_seq: i64,
    },
    /// What the channel's own platform connection reports.
    Connection(ConnectionEvent),
    Inspect(ractor::RpcReplyPort<serde_json::Value>),
}

/// A platform connection's news, sent by the adapter's connection task to
/// its own actor.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionEvent {
    /// Connected and receiving events (again, after a reconnect).
    Up,
    /// The connection is gone and the platform library gave up: the actor
    /// fails, so its supervisor restarts it (with the crash-loop backoff).
    Lost(String),
    /// The platform refused the credentials: this adapter stops for good,
    /// the others keep serving.
    Rejected(String),
    /// The adapter has run long enough without a crash to reset its count.
    Stable,
}
