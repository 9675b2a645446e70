//! The local socket channel's wire protocol: one JSON object per line over
//! the Unix socket at `<home>/data/talon.sock`.
//!
//! A client (a local script, a bridge to another chat system) sends
//! [`ClientLine::Message`]; talon answers with [`TalonLine`]s: the agent's
//! replies and notices, a `settled` line when the agent is done with a
//! chat's messages, and an `error` line for anything it refused. The types
//! here are the single definition of that protocol; parsing and validation
//! are pure functions so they are tested without a socket.
//!
//! Delivery of `reply` lines is at-least-once. The client acknowledges each
//! one with [`ClientLine::Ack`] (`{"type":"ack","outbox_id":N}`), and only
//! then does talon count the reply as sent. Until then it is written again
//! to every client that connects (once per connection), so a client that
//! hangs up before acking gets it on its next connect. A client may
//! therefore see one reply more than once, always with the same
//! `outbox_id`: it dedupes by that id, and acknowledges every copy (an ack
//! for a reply already counted is ignored). `settled` and `error` lines
//! are not acknowledged. A well-formed ack is never answered, not even when
//! it names no unsent reply of a socket chat: it then changes nothing.

use serde::{Deserialize, Serialize};

use crate::messages::InboundMessage;
use crate::store::{OutboxKind, OutboxRow};

/// The chat id prefix of the socket channel: chats are `sock:<name>`.
pub const SOCKET_PREFIX: &str = "sock";

/// Longest line a client may send. A longer one is refused without being
/// buffered whole.
pub const MAX_CLIENT_LINE_BYTES: usize = 1024 * 1024;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientLine {
    /// A chat message. `id` is the client's own id for it: sending the same
    /// id again (after a reconnect, say) is recognised and ignored.
    Message {
        chat: String,
        id: String,
        sender: String,
        text: String,
    },
    /// The client has the `reply` line with this `outbox_id` (and will
    /// dedupe any further copy by it): talon may count it as sent.
    Ack { outbox_id: i64 },
}

/// Whether an outgoing line is the agent's answer or a line from talon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    Reply,
    Notice,
}

/// What talon sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TalonLine {
    /// An outbox row: the agent's reply, or a notice such as a batch that
    /// could not be processed. `outbox_id` identifies it across reconnects.
    Reply {
        chat: String,
        outbox_id: i64,
        kind: ReplyKind,
        text: String,
    },
    /// The agent is done with the chat's messages through `through_seq`.
    Settled { chat: String, through_seq: i64 },
    /// A line the client sent was refused; nothing else happened.
    Error { message: String },
}

impl TalonLine {
    pub fn reply(row: &OutboxRow) -> TalonLine {
        TalonLine::Reply {
            chat: row.chat_id.clone(),
            outbox_id: row.id,
            kind: match row.kind {
                OutboxKind::Reply => ReplyKind::Reply,
                OutboxKind::Notice => ReplyKind::Notice,
            },
            text: row.text.clone(),
        }
    }

    pub fn error(message: impl Into<String>) -> TalonLine {
        TalonLine::Error {
            message: message.into(),
        }
    }

    /// The line as sent: compact JSON and a newline.
    pub fn to_line(&self) -> String {
        // Serialising these plain structs cannot fail; keep the protocol
        // promise (one JSON object per line) even if it somehow did.
        let mut line = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","message":"cannot encode a line"}"#.into());
        line.push('\n');
        line
    }
}

/// Whether `chat_id` belongs to the socket channel: `sock:` and a name.
pub fn is_socket_chat(chat_id: &str) -> bool {
    chat_id
        .strip_prefix(SOCKET_PREFIX)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|name| !name.trim().is_empty())
}

/// Parses and checks one line from a client (without its newline). The
/// error is the message of the `error` line sent back.
pub fn parse_client_line(line: &[u8]) -> Result<ClientLine, String> {
    let parsed: ClientLine = serde_json::from_slice(line).map_err(|e| {
        format!(
            "not a valid message line ({e}); expected \
             {{\"type\":\"message\",\"chat\":\"sock:<name>\",\"id\":\"…\",\"sender\":\"…\",\"text\":\"…\"}} \
             or {{\"type\":\"ack\",\"outbox_id\":N}}"
        )
    })?;
    let ClientLine::Message {
        chat,
        id,
        sender,
        text,
    } = &parsed
    else {
        // Any id is well formed: the channel decides what it names.
        return Ok(parsed);
    };
    if !is_socket_chat(chat) {
        return Err(format!(
            "chat {chat:?} is not a socket chat: it must look like \"{SOCKET_PREFIX}:<name>\""
        ));
    }
    if id.trim().is_empty() {
        return Err("id must not be empty: it is how a resent message is recognised".into());
    }
    if sender.trim().is_empty() {
        return Err("sender must not be empty".into());
    }
    if text.trim().is_empty() {
        return Err("text must not be empty".into());
    }
    Ok(parsed)
}

/// The inbound message a client's line stands for, received at `now`;
/// `None` for a line that is not a chat message (an ack).
pub fn to_inbound(line: ClientLine, now: crate::messages::UnixMillis) -> Option<InboundMessage> {
    let ClientLine::Message {
        chat,
        id,
        sender,
        text,
    } = line
    else {
        return None;
    };
    Some(InboundMessage {
        chat_id: chat,
        platform_msg_id: id,
        sender_id: sender.clone(),
        sender_name: sender,
        content: text,
        timestamp: now,
        is_from_me: false,
        is_bot_message: false,
        reply_to: None,
        thread_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_line_parses_and_normalises() {
        let line =
            br#"{"type":"message","chat":"sock:g1","id":"42","sender":"ann","text":"hi <there>"}"#;
        let parsed = parse_client_line(line).unwrap();
        let inbound = to_inbound(parsed, 1_700_000_000_000);
        assert_eq!(
            inbound,
            Some(InboundMessage {
                chat_id: "sock:g1".into(),
                platform_msg_id: "42".into(),
                sender_id: "ann".into(),
                sender_name: "ann".into(),
                content: "hi <there>".into(),
                timestamp: 1_700_000_000_000,
                is_from_me: false,
                is_bot_message: false,
                reply_to: None,
                thread_id: None,
            })
        );
    }

    #[test]
    fn an_ack_line_parses_and_is_no_message() {
        let parsed = parse_client_line(br#"{"type":"ack","outbox_id":42}"#).unwrap();
        assert_eq!(parsed, ClientLine::Ack { outbox_id: 42 });
        assert_eq!(to_inbound(parsed, 0), None);
        // Whether an id names anything is the channel's question, not the
        // parser's: it never refuses a well-formed ack.
        assert_eq!(
            parse_client_line(br#"{"type":"ack","outbox_id":-1,"extra":true}"#),
            Ok(ClientLine::Ack { outbox_id: -1 })
        );
        let line = serde_json::to_string(&ClientLine::Ack { outbox_id: 7 }).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&line).unwrap(),
            serde_json::json!({"type":"ack","outbox_id":7})
        );
    }

    #[test]
    fn unknown_fields_are_tolerated_for_newer_clients() {
        let line =
            br#"{"type":"message","chat":"sock:a","id":"1","sender":"s","text":"t","extra":3}"#;
        assert!(parse_client_line(line).is_ok());
    }

    #[test]
    fn bad_lines_are_refused_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not a valid message line"),
            (b"", "not a valid message line"),
            (b"\xff\xfe", "not a valid message line"),
            (br#"{"type":"hello"}"#, "not a valid message line"),
            (
                br#"{"type":"message","chat":"sock:a","id":"1","text":"t"}"#,
                "sender",
            ),
            (
                br#"{"type":"message","chat":"term:local","id":"1","sender":"s","text":"t"}"#,
                "not a socket chat",
            ),
            (
                br#"{"type":"message","chat":"sock:","id":"1","sender":"s","text":"t"}"#,
                "not a socket chat",
            ),
            (
                br#"{"type":"message","chat":"socks:a","id":"1","sender":"s","text":"t"}"#,
                "not a socket chat",
            ),
            (
                br#"{"type":"message","chat":"sock:a","id":" ","sender":"s","text":"t"}"#,
                "id must not be empty",
            ),
            (
                br#"{"type":"message","chat":"sock:a","id":"1","sender":"","text":"t"}"#,
                "sender must not be empty",
            ),
            (
                br#"{"type":"message","chat":"sock:a","id":"1","sender":"s","text":"  "}"#,
                "text must not be empty",
            ),
            (
                br#"{"type":"message","chat":"sock:a","id":1,"sender":"s","text":"t"}"#,
                "not a valid message line",
            ),
            (br#"{"type":"ack"}"#, "not a valid message line"),
            (
                br#"{"type":"ack","outbox_id":"7"}"#,
                "not a valid message line",
            ),
            (
                br#"{"type":"ack","outbox_id":1.5}"#,
                r#"{"type":"ack","outbox_id":N}"#,
            ),
        ];
        for (line, needle) in cases {
            let error = parse_client_line(line).unwrap_err();
            assert!(
                error.contains(needle),
                "{:?}: {error:?} lacks {needle:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn outgoing_lines_have_the_documented_shape() {
        let row = OutboxRow {
            id: 7,
            chat_id: "sock:g1".into(),
            group_folder: "g1".into(),
            kind: OutboxKind::Notice,
            text: "line one\nline two".into(),
            thread_id: None,
            through_seq: Some(3),
        };
        let line = TalonLine::reply(&row).to_line();
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type":"reply","chat":"sock:g1","outbox_id":7,"kind":"notice","text":"line one\nline two"})
        );
        let settled = TalonLine::Settled {
            chat: "sock:g1".into(),
            through_seq: 12,
        };
        let value: serde_json::Value = serde_json::from_str(&settled.to_line()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type":"settled","chat":"sock:g1","through_seq":12})
        );
        let value: serde_json::Value =
            serde_json::from_str(&TalonLine::error("nope").to_line()).unwrap();
        assert_eq!(value, serde_json::json!({"type":"error","message":"nope"}));
        // Lines round-trip, so clients written in Rust can use these types.
        let back: TalonLine = serde_json::from_str(&settled.to_line()).unwrap();
        assert_eq!(back, settled);
    }

    #[test]
    fn socket_chats_are_recognised() {
        assert!(is_socket_chat("sock:a"));
        assert!(is_socket_chat("sock:a:b"));
        assert!(!is_socket_chat("sock:"));
        assert!(!is_socket_chat("sock"));
        assert!(!is_socket_chat("term:sock:a"));
    }
}
