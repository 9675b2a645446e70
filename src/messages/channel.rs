//! The contract every channel actor (terminal, Slack, Discord) answers.
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
    /// The agent finished with a chat's messages through `through_seq`
    /// (answered, or given up on with a notice).
    Settled {
        chat_id: String,
        through_seq: i64,
    },
    Inspect(ractor::RpcReplyPort<serde_json::Value>),
}
