//! What a model reply means for its turn, decided from its stop reason and
//! content alone: run its tool calls, continue a paused turn, or end, with
//! a short notice when the user would otherwise get nothing or not know the
//! reply was cut. The host maps every provider's shapes to Anthropic's stop
//! words (OpenAI's in `openai.rs`), so this is the one place that decides
//! what the user is told. Also: a tool call the host marked unreadable.

use serde_json::Value;

use crate::wire::INVALID_TOOL_INPUT_KEY;

pub const REFUSED: &str = "[the model declined to answer this]";
pub const FILTERED: &str = "[the provider's content filter stopped this reply]";
pub const EMPTY: &str = "[the model returned an empty answer]";
pub const CUT: &str = "[cut: the reply reached the length limit]";

/// What the turn does with a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Run the reply's tool calls, then ask the model again.
    RunTools,
    /// The server paused a long turn: ask again with the reply appended, as
    /// the API expects, so the model carries on where it stopped.
    Continue,
    /// The turn ends here. Tool calls in the reply are not run (and not
    /// kept): a cut call is incomplete, a refused or filtered one unwanted.
    /// A refusal is not an error either: a retry would be refused the same way.
    End { notice: Option<&'static str> },
}

/// What `stop_reason` with this content means. `said_before`: the user
/// already heard from this turn (its text, or a `send_message`), so a final
/// empty reply is no silence and gets no notice.
pub fn ending(
    stop_reason: Option<&str>,
    has_text: bool,
    has_tool_calls: bool,
    said_before: bool,
) -> Ending {
    match stop_reason {
        Some("max_tokens") => Ending::End { notice: Some(CUT) },
        Some("refusal") => Ending::End {
            notice: Some(REFUSED),
        },
        Some("content_filter") => Ending::End {
            notice: Some(FILTERED),
        },
        _ if has_tool_calls => Ending::RunTools,
        Some("pause_turn") => Ending::Continue,
        _ if has_text || said_before => Ending::End { notice: None },
        // end_turn, stop_sequence, none or a word this runner does not know,
        // and nothing to show for it.
        _ => Ending::End {
            notice: Some(EMPTY),
        },
    }
}

/// What the user is shown for a reply's text and its notice, if anything.
pub fn shown(text: &str, notice: Option<&str>) -> Option<String> {
    match (text.is_empty(), notice) {
        (true, None) => None,
        (true, Some(notice)) => Some(notice.to_string()),
        (false, None) => Some(text.to_string()),
        (false, Some(notice)) => Some(format!("{text}\n\n{notice}")),
    }
}

/// The error a tool call gets instead of running when the host could not
/// read its arguments (it marks the input with [`INVALID_TOOL_INPUT_KEY`]).
pub fn invalid_arguments(input: &Value) -> Option<String> {
    let why = input.as_object()?.get(INVALID_TOOL_INPUT_KEY)?;
    let why = why
        .as_str()
        .unwrap_or("the tool call's arguments could not be read");
    Some(format!(
        "{why}. The tool was not run; call it again with a JSON object of arguments."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(notice: Option<&'static str>) -> Ending {
        Ending::End { notice }
    }

    #[test]
    fn every_stop_reason_and_content_shape_has_its_ending() {
        // (stop_reason, has text, has tool calls, said before) -> ending
        let cases = [
            // Ordinary answers and tool use.
            (Some("end_turn"), true, false, false, end(None)),
            (Some("stop_sequence"), true, false, false, end(None)),
            (Some("tool_use"), false, true, false, Ending::RunTools),
            (Some("tool_use"), true, true, true, Ending::RunTools),
            // Tool calls decide, whatever a server says around them.
            (Some("end_turn"), false, true, false, Ending::RunTools),
            (None, false, true, false, Ending::RunTools),
            (Some("pause_turn"), false, true, false, Ending::RunTools),
            // A paused turn goes on, with or without text so far.
            (Some("pause_turn"), false, false, false, Ending::Continue),
            (Some("pause_turn"), true, false, true, Ending::Continue),
            // An empty answer is a notice, not silence...
            (Some("end_turn"), false, false, false, end(Some(EMPTY))),
            (Some("stop_sequence"), false, false, false, end(Some(EMPTY))),
            (None, false, false, false, end(Some(EMPTY))),
            (Some("something_new"), false, false, false, end(Some(EMPTY))),
            // ...unless the turn already spoke (text before its tool calls,
            // or a send_message).
            (Some("end_turn"), false, false, true, end(None)),
            (Some("something_new"), true, false, false, end(None)),
            // Refusals and filter stops: a notice, never a tool run.
            (Some("refusal"), false, false, false, end(Some(REFUSED))),
            (Some("refusal"), true, false, true, end(Some(REFUSED))),
            (Some("refusal"), false, true, false, end(Some(REFUSED))),
            (
                Some("content_filter"),
                false,
                false,
                false,
                end(Some(FILTERED)),
            ),
            (
                Some("content_filter"),
                true,
                true,
                false,
                end(Some(FILTERED)),
            ),
            // A cut reply keeps its text, says so, and runs no half call.
            (Some("max_tokens"), true, false, false, end(Some(CUT))),
            (Some("max_tokens"), true, true, false, end(Some(CUT))),
            (Some("max_tokens"), false, true, false, end(Some(CUT))),
            (Some("max_tokens"), false, false, true, end(Some(CUT))),
        ];
        for (stop, text, tools, said, expected) in cases {
            assert_eq!(
                ending(stop, text, tools, said),
                expected,
                "{stop:?} text={text} tools={tools} said_before={said}"
            );
        }
    }

    #[test]
    fn the_notice_follows_the_text_or_stands_alone() {
        assert_eq!(shown("", None), None);
        assert_eq!(shown("hi", None).as_deref(), Some("hi"));
        assert_eq!(shown("", Some(REFUSED)).as_deref(), Some(REFUSED));
        assert_eq!(
            shown("The first half", Some(CUT)).as_deref(),
            Some("The first half\n\n[cut: the reply reached the length limit]")
        );
    }

    #[test]
    fn only_a_marked_input_is_an_invalid_call() {
        let marked = serde_json::json!({
            INVALID_TOOL_INPUT_KEY: "the tool call's arguments were not valid JSON: EOF"
        });
        let error = invalid_arguments(&marked).unwrap_or_default();
        assert!(
            error.starts_with("the tool call's arguments were not valid JSON: EOF."),
            "{error}"
        );
        assert!(error.contains("not run"), "{error}");
        let odd = serde_json::json!({ INVALID_TOOL_INPUT_KEY: 7 });
        assert!(invalid_arguments(&odd).is_some_and(|e| e.contains("could not be read")));
        for fine in [
            serde_json::json!({"command": "ls"}),
            serde_json::json!({}),
            serde_json::Value::Null,
            serde_json::json!("talon_invalid_arguments"),
        ] {
            assert_eq!(invalid_arguments(&fine), None, "{fine}");
        }
    }
}
