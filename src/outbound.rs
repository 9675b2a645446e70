//! What the agent's output looks like by the time a user sees it.

/// Removes every `<internal>…</internal>` span (the agent's notes to itself).
/// An unclosed `<internal>` hides the rest of the text: better to say too
/// little than to leak the agent's scratch work.
pub fn strip_internal(text: &str) -> String {
    const OPEN: &str = "<internal>";
    const CLOSE: &str = "</internal>";
    let mut visible = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        visible.push_str(&rest[..start]);
        match rest[start + OPEN.len()..].find(CLOSE) {
            Some(end) => rest = &rest[start + OPEN.len() + end + CLOSE.len()..],
            None => {
                rest = "";
                break;
            }
        }
    }
    visible.push_str(rest);
    visible.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_spans_are_removed() {
        assert_eq!(
            strip_internal("hi <internal>plan</internal>there"),
            "hi there"
        );
        assert_eq!(strip_internal("<internal>a</internal>"), "");
        assert_eq!(
            strip_internal("a<internal>b</internal>c<internal>d</internal>e"),
            "ace"
        );
        assert_eq!(strip_internal("keep <internal>never closed"), "keep");
        assert_eq!(strip_internal("plain"), "plain");
    }
}
