//! What a group's next run is made of, as pure functions: which stored
//! messages form the batch, the prompt of a scheduled task, and whether a
//! failure means the agent's session is gone. The group queue actor
//! (`actors::group_queue`) acts on them.

use crate::messages::StoredMessage;

/// The prompt of a scheduled task run, at most `max_wire_bytes` encoded:
/// a longer task prompt (the agent wrote it) is cut, with a note.
pub fn task_prompt(task_id: &str, prompt: &str, max_wire_bytes: usize) -> String {
    use crate::prompt::{escape_within, escape_xml, wire_len};
    const CUT: &str = "[talon: the rest of this task's prompt was cut: over the prompt size limit]";
    let id = escape_xml(task_id);
    let frame = wire_len(&id) + wire_len(CUT) + 48;
    let (mut body, cut) = escape_within(prompt, max_wire_bytes.saturating_sub(frame));
    if cut {
        body.push_str(CUT);
    }
    format!("<scheduled_task id=\"{id}\">{body}</scheduled_task>")
}

/// Picks the next batch from the messages after the cursor (oldest first).
/// Nothing, unless one of them wakes the agent. Messages are requests in
/// chunks of `limit`; when the first waking message lies further back than
/// `limit`, the batch is the `limit` messages ending at it (older ones were
/// only chatter, kept in the store, never requests).
pub fn select_batch(
    pending: &[StoredMessage],
    limit: usize,
    wakes: impl Fn(&StoredMessage) -> bool,
) -> Option<&[StoredMessage]> {
    let limit = limit.max(1);
    let first_waking = pending.iter().position(wakes)?;
    if first_waking < limit {
        Some(&pending[..limit.min(pending.len())])
    } else {
        Some(&pending[first_waking + 1 - limit..=first_waking])
    }
}

/// Whether a run failure says the agent's session is gone (the session id
/// must be cleared and the batch retried fresh).
pub fn is_stale_session_error(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    // Claude Code's own wording for a missing transcript has no "not found".
    e.contains("no conversation found")
        || (e.contains("session")
            && (e.contains("not found") || e.contains("unknown") || e.contains("missing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_prompt_is_escaped_and_cut_to_the_limit() {
        assert_eq!(
            task_prompt("t1", "say <hi>", 10_000),
            "<scheduled_task id=\"t1\">say &lt;hi&gt;</scheduled_task>"
        );
        let long = task_prompt("t1", &"&".repeat(100_000), 5_000);
        let encoded = serde_json::to_string(&long).unwrap().len();
        assert!(encoded <= 5_000, "{encoded}");
        assert!(long.contains("prompt was cut") && long.ends_with("</scheduled_task>"));
    }

    fn pending(texts: &[&str]) -> Vec<StoredMessage> {
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| StoredMessage {
                seq: i as i64 + 1,
                chat_id: "c".into(),
                platform_msg_id: i.to_string(),
                sender_id: "u".into(),
                sender_name: "U".into(),
                content: text.to_string(),
                timestamp: 0,
                is_from_me: false,
                is_bot_message: false,
                reply_to: None,
                thread_id: None,
            })
            .collect()
    }

    fn seqs(batch: Option<&[StoredMessage]>) -> Option<Vec<i64>> {
        batch.map(|b| b.iter().map(|m| m.seq).collect())
    }

    #[test]
    fn chatter_alone_wakes_nothing() {
        let msgs = pending(&["hi", "lol"]);
        assert_eq!(
            seqs(select_batch(&msgs, 10, |m| m.content.starts_with('@'))),
            None
        );
    }

    #[test]
    fn a_trigger_takes_the_context_before_it() {
        let msgs = pending(&["a", "b", "@t go", "c"]);
        assert_eq!(
            seqs(select_batch(&msgs, 10, |m| m.content.starts_with('@'))),
            Some(vec![1, 2, 3, 4])
        );
    }

    #[test]
    fn requests_are_served_in_chunks_oldest_first() {
        let msgs = pending(&["1", "2", "3", "4", "5"]);
        assert_eq!(seqs(select_batch(&msgs, 2, |_| true)), Some(vec![1, 2]));
    }

    #[test]
    fn a_late_trigger_keeps_only_the_latest_context() {
        let msgs = pending(&["a", "b", "c", "d", "@t now"]);
        assert_eq!(
            seqs(select_batch(&msgs, 2, |m| m.content.starts_with('@'))),
            Some(vec![4, 5])
        );
        assert_eq!(
            seqs(select_batch(&msgs, 0, |m| m.content.starts_with('@'))),
            Some(vec![5])
        );
    }

    #[test]
    fn stale_session_errors_are_recognised() {
        assert!(is_stale_session_error(
            "No conversation found with session ID abc: session not found"
        ));
        assert!(is_stale_session_error(
            "No conversation found with session ID abc"
        ));
        assert!(is_stale_session_error(
            "No conversation found with session ID: 0b1e2f"
        ));
        assert!(is_stale_session_error("Session transcript missing"));
        assert!(is_stale_session_error("unknown session id"));
        assert!(!is_stale_session_error("rate limited"));
        assert!(!is_stale_session_error("file not found"));
    }
}
