//! The tier router (spec §7): decides per batch whether the cheap LIGHT tier
//! (a copilot proxy, Ollama) or the HEAVY tier (Claude) answers it.
//!
//! Pure functions over text and settings, so every rule is table-tested:
//! an explicit `!light` / `!heavy` line wins, then the group's own choice,
//! then heavy keywords, then the length rule; anything else is HEAVY, the
//! safe default. Whether a LIGHT provider exists is decided elsewhere.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::RouterConfig;

/// Which provider tier answers a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Light,
    Heavy,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Light => "light",
            Tier::Heavy => "heavy",
        })
    }
}

/// The explicit prefixes a user may start a line with.
pub const LIGHT_PREFIX: &str = "!light";
pub const HEAVY_PREFIX: &str = "!heavy";

/// Decides the tier of one batch. `batch_text` is the messages' text (see
/// [`batch_text_of_prompt`]); `group_tier` is the group's own choice. The
/// reason is a short stable phrase for the routing log.
pub fn route(batch_text: &str, group_tier: Option<Tier>, rules: &RouterConfig) -> (Tier, String) {
    if rules.enabled {
        if let Some((tier, prefix)) = explicit_prefix(batch_text) {
            return (tier, format!("prefix {prefix}"));
        }
    }
    if let Some(tier) = group_tier {
        return (tier, "group setting".into());
    }
    if !rules.enabled {
        return (Tier::Heavy, "router disabled".into());
    }
    let lowered = batch_text.to_lowercase();
    let words: Vec<&str> = lowered
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect();
    if let Some(keyword) = rules
        .heavy_keywords
        .iter()
        .find(|keyword| contains_phrase(&words, keyword))
    {
        return (Tier::Heavy, format!("keyword {keyword:?}"));
    }
    let length = batch_text.trim().chars().count();
    if length < rules.light_max_chars {
        return (
            Tier::Light,
            format!("short ({length} < {} chars)", rules.light_max_chars),
        );
    }
    (Tier::Heavy, "default".into())
}

/// The last line (after any leading `@mentions`) that starts with an
/// explicit prefix: the most recent instruction wins.
fn explicit_prefix(text: &str) -> Option<(Tier, &'static str)> {
    text.lines().rev().find_map(|line| {
        let mut rest = line.trim_start();
        while let Some(after_at) = rest.strip_prefix('@') {
            rest = after_at
                .split_once(char::is_whitespace)
                .map_or("", |(_, tail)| tail.trim_start());
        }
        let first = rest.split_whitespace().next()?.to_lowercase();
        match first.as_str() {
            LIGHT_PREFIX => Some((Tier::Light, LIGHT_PREFIX)),
            HEAVY_PREFIX => Some((Tier::Heavy, HEAVY_PREFIX)),
            _ => None,
        }
    })
}

/// Whether the (already lower-cased) keyword, one word or several, occurs
/// as whole words: "plan" matches "plan a trip", not "planet".
fn contains_phrase(words: &[&str], keyword: &str) -> bool {
    let wanted: Vec<&str> = keyword
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect();
    !wanted.is_empty() && words.windows(wanted.len()).any(|window| window == wanted)
}

/// The message text of an agent prompt: the contents of its `<message>` (or
/// `<scheduled_task>`) elements, unescaped, one per line; the whole prompt
/// when it has neither. Routing on this keeps the XML envelope (senders,
/// times) from counting towards the length rule.
pub fn batch_text_of_prompt(prompt: &str) -> String {
    let mut texts = Vec::new();
    for tag in ["message", "scheduled_task"] {
        let open = format!("<{tag}");
        let close = format!("</{tag}>");
        let mut rest = prompt;
        while let Some(start) = rest.find(&open) {
            let after_open = &rest[start + open.len()..];
            // `<messages>` also starts with `<message`: require a tag end.
            if !after_open.starts_with([' ', '>']) {
                rest = after_open;
                continue;
            }
            let Some(body_start) = after_open.find('>') else {
                break;
            };
            let body = &after_open[body_start + 1..];
            let Some(end) = body.find(&close) else {
                break;
            };
            texts.push(unescape_xml(&body[..end]));
            rest = &body[end + close.len()..];
        }
    }
    if texts.is_empty() {
        prompt.to_string()
    } else {
        texts.join("\n")
    }
}

fn unescape_xml(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RouterConfig {
        RouterConfig {
            enabled: true,
            light_max_chars: 40,
            heavy_keywords: vec!["debug".into(), "code review".into()],
        }
    }

    #[test]
    fn routing_rules_in_order() {
        let long = "tell me everything about the history of the roman empire please";
        let cases: &[(&str, Option<Tier>, Tier, &str)] = &[
            (
                "!light debug this whole thing",
                None,
                Tier::Light,
                "prefix !light",
            ),
            ("@Talon !heavy hi", None, Tier::Heavy, "prefix !heavy"),
            ("@Talon @Bob !LIGHT hi", None, Tier::Light, "prefix !light"),
            ("!light\n!heavy later", None, Tier::Heavy, "prefix !heavy"),
            ("!heavy hi", Some(Tier::Light), Tier::Heavy, "prefix !heavy"),
            ("hi", Some(Tier::Heavy), Tier::Heavy, "group setting"),
            (long, Some(Tier::Light), Tier::Light, "group setting"),
            ("please Debug it", None, Tier::Heavy, "keyword \"debug\""),
            (
                "a code review?",
                None,
                Tier::Heavy,
                "keyword \"code review\"",
            ),
            ("debugger", None, Tier::Light, "short (8 < 40 chars)"),
            (
                "what time is it?",
                None,
                Tier::Light,
                "short (16 < 40 chars)",
            ),
            ("!lighter hi", None, Tier::Light, "short (11 < 40 chars)"),
            (long, None, Tier::Heavy, "default"),
        ];
        for (text, group, tier, reason) in cases {
            assert_eq!(
                route(text, *group, &rules()),
                (*tier, reason.to_string()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_disabled_router_only_honours_the_group_setting() {
        let off = RouterConfig {
            enabled: false,
            ..rules()
        };
        assert_eq!(
            route("!light hi", None, &off),
            (Tier::Heavy, "router disabled".into())
        );
        assert_eq!(
            route("!heavy hi", Some(Tier::Light), &off),
            (Tier::Light, "group setting".into())
        );
    }

    #[test]
    fn a_zero_length_limit_turns_the_length_rule_off() {
        let no_length = RouterConfig {
            light_max_chars: 0,
            ..rules()
        };
        assert_eq!(route("hi", None, &no_length).0, Tier::Heavy);
    }

    #[test]
    fn prompt_text_is_the_unescaped_message_bodies() {
        let prompt = "<messages>\n<message sender=\"Ann\" time=\"2024-03-02 08:30\">hi &amp; &lt;bye&gt;</message>\n\
                      <message sender=\"Bo\" time=\"t\">!light ok</message>\n</messages>";
        assert_eq!(batch_text_of_prompt(prompt), "hi & <bye>\n!light ok");
        assert_eq!(
            batch_text_of_prompt("<scheduled_task id=\"t1\">check mail</scheduled_task>"),
            "check mail"
        );
        assert_eq!(batch_text_of_prompt("plain"), "plain");
        assert_eq!(batch_text_of_prompt("<messages/>"), "<messages/>");
    }
}
