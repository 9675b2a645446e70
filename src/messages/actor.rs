//! Data carried between actors: inbound chat messages, stored messages and
//! registered groups. Each actor's own message enum lives beside it in
//! `src/actors/`; the types here are the ones several actors share.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
pub type UnixMillis = i64;

/// A platform event, normalised by a channel actor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// Prefixed by channel: `term:<name>`, `slack:<channel>`, `dc:<channel>`.
    pub chat_id: String,
    /// The platform's own id for the message; the dedupe key.
    pub platform_msg_id: String,
    pub sender_id: String,
    pub sender_name: String,
    pub content: String,
    pub timestamp: UnixMillis,
    pub is_from_me: bool,
    pub is_bot_message: bool,
    /// Platform id of the message this one replies to, if any.
    pub reply_to: Option<String>,
    /// Thread the message belongs to (Slack thread ts), if any.
    pub thread_id: Option<String>,
}

/// A message as stored: `seq` is the store's insertion order, which is what
/// cursors count in (platform timestamps can collide or arrive out of order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub seq: i64,
    pub chat_id: String,
    pub platform_msg_id: String,
    pub sender_id: String,
    pub sender_name: String,
    pub content: String,
    pub timestamp: UnixMillis,
    pub is_from_me: bool,
    pub is_bot_message: bool,
    pub reply_to: Option<String>,
    pub thread_id: Option<String>,
}

/// A chat the assistant serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredGroup {
    pub chat_id: String,
    pub name: String,
    /// Directory name under `groups/`; `[a-z0-9-]+`, unique.
    pub folder: String,
    /// Overrides the default `^@<assistant>\b` when set.
    pub trigger_pattern: Option<String>,
    pub requires_trigger: bool,
    pub is_main: bool,
    /// Per-group container settings as JSON (validated on write).
    pub container_config: Option<String>,
    pub added_at: UnixMillis,
}

/// Which channel a chat id belongs to: the part before the first `:`.
pub fn channel_of(chat_id: &str) -> &str {
    chat_id.split_once(':').map_or("", |(channel, _)| channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_is_the_chat_id_prefix() {
        assert_eq!(channel_of("term:local"), "term");
        assert_eq!(channel_of("slack:C123"), "slack");
        assert_eq!(channel_of("dc:99:x"), "dc");
        assert_eq!(channel_of("nocolon"), "");
    }
}
