//! The conversation of a run as the model sees it: messages stored as they
//! came, joined by role only when a request is built, and rendered as plain
//! text for the summary that compacts a transcript.

use crate::wire::{ChatMessage, ContentBlock, Role};

/// The system prompt of the request that summarises a conversation.
pub const SUMMARY_SYSTEM: &str = "Summarise this conversation for your future self: \
     who said what that still matters, decisions, facts learned, files touched, \
     open tasks and promises. Be complete but brief; reply with the summary only.";

/// Opens the summary kept in a compacted transcript.
pub const SUMMARY_HEADING: &str = "Summary of the earlier conversation:\n";

/// A rendered block is cut to this many chars in a summary request.
const SUMMARY_BLOCK_CHARS: usize = 4000;

/// The text of a reply: its text blocks joined, in order.
pub fn reply_text(content: &[ContentBlock]) -> String {
    content
        .iter()
        .filter_map(|block| match block {
            ContentBlock::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("")
}

pub fn user_text(prompt: &str) -> ContentBlock {
    ContentBlock::Text {
        text: prompt.to_string(),
    }
}

/// The conversation of one run, kept in memory: user and assistant messages
/// strictly alternating, starting with the user, as the Messages API demands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    pub messages: Vec<ChatMessage>,
}

impl Conversation {
    /// The messages to send for a turn: everything so far plus `prompt`. The
    /// conversation itself is only replaced once the turn succeeds, so a
    /// failed turn leaves no trace.
    pub fn with_prompt(&self, prompt: &str) -> Vec<ChatMessage> {
        let mut messages = self.messages.clone();
        push_user(&mut messages, vec![user_text(prompt)]);
        messages
    }
}

/// Appends user content as a message of its own. It may follow another user
/// message (after an empty reply, or a turn cut short after tool results);
/// [`request_messages`] joins them, so what is stored is what was said.
pub fn push_user(messages: &mut Vec<ChatMessage>, content: Vec<ContentBlock>) {
    messages.push(ChatMessage {
        role: Role::User,
        content,
    });
}

/// The messages as a model request carries them: consecutive messages of the
/// same role joined into one, so roles alternate as the Messages API demands.
pub fn request_messages(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let mut joined: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    for message in messages {
        match joined.last_mut() {
            Some(last) if last.role == message.role => {
                last.content.extend(message.content.iter().cloned())
            }
            _ => joined.push(message.clone()),
        }
    }
    joined
}

/// A conversation as plain text, for the summary request: tool calls and
/// results become text, so the request needs no tool specs, and every block
/// is capped so one huge tool output cannot crowd out the rest.
pub fn render_for_summary(messages: &[ChatMessage]) -> String {
    let cap = |text: &str| -> String {
        if text.chars().count() > SUMMARY_BLOCK_CHARS {
            let cut: String = text.chars().take(SUMMARY_BLOCK_CHARS).collect();
            format!("{cut} [...]")
        } else {
            text.to_string()
        }
    };
    let mut out = String::new();
    for message in messages {
        let who = match message.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        for block in &message.content {
            let line = match block {
                ContentBlock::Text { text } => format!("[{who}] {}", cap(text)),
                ContentBlock::ToolUse { name, input, .. } => {
                    format!("[{who} called {name}] {}", cap(&input.to_string()))
                }
                ContentBlock::ToolResult {
                    content, is_error, ..
                } => {
                    let kind = if *is_error {
                        "tool error"
                    } else {
                        "tool result"
                    };
                    format!("[{kind}] {}", cap(content))
                }
            };
            out.push_str(&line);
            out.push_str("\n\n");
        }
    }
    out
}

/// Appends a reply. Empty text blocks are dropped and an empty reply adds no
/// message at all: the API refuses both.
pub fn push_assistant(messages: &mut Vec<ChatMessage>, reply: &[ContentBlock]) {
    let content: Vec<ContentBlock> = reply
        .iter()
        .filter(|block| !matches!(block, ContentBlock::Text { text } if text.is_empty()))
        .cloned()
        .collect();
    if !content.is_empty() {
        messages.push(ChatMessage {
            role: Role::Assistant,
            content,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::test_support::text;

    #[test]
    fn reply_text_joins_blocks_in_order() {
        assert_eq!(reply_text(&[text("a"), text(""), text("b")]), "ab");
        assert_eq!(reply_text(&[]), "");
    }

    #[test]
    fn requests_join_what_the_conversation_stores_apart_after_an_empty_reply() {
        let mut conversation = Conversation::default();
        conversation.messages = conversation.with_prompt("one");
        push_assistant(&mut conversation.messages, &[text("first")]);
        conversation.messages = conversation.with_prompt("two");
        push_assistant(&mut conversation.messages, &[text("")]);
        let messages = conversation.with_prompt("three");
        // Stored as said: two user messages in a row.
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            vec![Role::User, Role::Assistant, Role::User, Role::User]
        );
        // Sent joined, so roles alternate.
        let sent = request_messages(&messages);
        let roles: Vec<Role> = sent.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec![Role::User, Role::Assistant, Role::User]);
        assert_eq!(sent[2].content, vec![text("two"), text("three")]);
        // Building a request does not change the conversation.
        assert_eq!(conversation.messages.len(), 3);
    }
}
