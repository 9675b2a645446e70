//! Trigger matching: decides whether a chat message addresses the assistant.
//!
//! In a registered group that requires a trigger, only messages starting with
//! `@<assistant name>` (case-insensitive, whole word) wake the agent; the rest
//! are stored and sent later as context. Platform mentions of the bot
//! (`<@U123>` on Slack, `<@123>` / `<@!123>` on Discord) are rewritten to
//! `@<assistant name>` first, so tagging the bot works like typing its name.

use regex::{Regex, RegexBuilder};

use crate::messages::{RegisteredGroup, StoredMessage};

/// `^@<regex-escaped name>\b`.
///
/// The word boundary is added only when the name ends in a word character:
/// after a name like `Bot!` a `\b` would demand a letter right after the `!`,
/// which no one types. `regex`'s `\b` is Unicode-aware, so `@폴 안녕` matches.
pub fn default_pattern(assistant_name: &str) -> String {
    let escaped = regex::escape(assistant_name);
    let ends_in_word_char = assistant_name
        .chars()
        .next_back()
        .is_some_and(|c| c.is_alphanumeric() || c == '_');
    if ends_in_word_char {
        format!(r"^@{escaped}\b")
    } else {
        format!("^@{escaped}")
    }
}

/// A compiled, case-insensitive trigger pattern.
#[derive(Debug, Clone)]
pub struct Trigger {
    regex: Regex,
}

impl Trigger {
    pub fn new(pattern: &str) -> Result<Trigger, regex::Error> {
        let regex = RegexBuilder::new(pattern).case_insensitive(true).build()?;
        Ok(Trigger { regex })
    }

    /// Leading whitespace is ignored: chat clients and pasted text often add it.
    pub fn matches(&self, text: &str) -> bool {
        self.regex.is_match(text.trim_start())
    }

    pub fn pattern(&self) -> &str {
        self.regex.as_str()
    }
}

/// Rewrites platform mentions of the bot (`<@U123>` Slack, `<@123>` /
/// `<@!123>` Discord, and Slack's legacy `<@U123|name>`) to `@<assistant_name>`,
/// wherever they appear. Mentions of other users are left alone.
pub fn rewrite_mention(text: &str, bot_user_id: &str, assistant_name: &str) -> String {
    if bot_user_id.is_empty() {
        return text.to_string();
    }
    let replacement = format!("@{assistant_name}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<@") {
        out.push_str(&rest[..start]);
        let after_open = &rest[start + 2..];
        match bot_mention_len(after_open, bot_user_id) {
            Some(len) => {
                out.push_str(&replacement);
                rest = &after_open[len..];
            }
            None => {
                out.push_str("<@");
                rest = after_open;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The length of a bot mention's remainder after `<@`, if it is one:
/// optional `!`, the exact id, then `>` or `|label>`.
fn bot_mention_len(after_open: &str, bot_user_id: &str) -> Option<usize> {
    let bang = usize::from(after_open.starts_with('!'));
    let tail = after_open[bang..].strip_prefix(bot_user_id)?;
    let consumed = bang + bot_user_id.len();
    if tail.starts_with('>') {
        return Some(consumed + 1);
    }
    let label = tail.strip_prefix('|')?;
    let close = label.find('>')?;
    Some(consumed + 1 + close + 1)
}

/// Whether a message in a registered group should wake the agent: main groups
/// and groups with `requires_trigger=false` always; others only when the
/// trigger matches.
pub fn wakes_agent(is_main: bool, requires_trigger: bool, trigger: &Trigger, text: &str) -> bool {
    is_main || !requires_trigger || trigger.matches(text)
}

/// Whether a stored message of `group` should wake the agent: never a bot's
/// message, else as [`wakes_agent`] says. The group queue, the terminal
/// chat's recovery and `talon doctor` share it, so they never disagree
/// about what is waiting for an answer.
pub fn message_wakes_agent(
    group: &RegisteredGroup,
    trigger: &Trigger,
    message: &StoredMessage,
) -> bool {
    !message.is_bot_message
        && wakes_agent(
            group.is_main,
            group.requires_trigger,
            trigger,
            &message.content,
        )
}

/// The trigger of `group`: its own pattern, else `configured`. A stored
/// pattern that does not compile falls back to `configured`, as the group
/// queue does.
pub fn group_trigger(group: &RegisteredGroup, configured: &str) -> Result<Trigger, regex::Error> {
    group
        .trigger_pattern
        .as_deref()
        .map_or_else(|| Trigger::new(configured), Trigger::new)
        .or_else(|_| Trigger::new(configured))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_trigger(name: &str) -> Trigger {
        Trigger::new(&default_pattern(name)).unwrap()
    }

    #[test]
    fn default_pattern_escapes_the_name() {
        assert_eq!(default_pattern("Talon"), r"^@Talon\b");
        assert_eq!(default_pattern("a.b"), r"^@a\.b\b");
        let dotted = default_trigger("a.b");
        assert!(dotted.matches("@a.b hi"));
        assert!(!dotted.matches("@axb hi"), "the dot must be literal");
    }

    #[test]
    fn is_case_insensitive() {
        let trigger = default_trigger("Talon");
        assert!(trigger.matches("@talon hi"));
        assert!(trigger.matches("@TALON hi"));
        assert!(trigger.matches("@Talon"));
    }

    #[test]
    fn needs_a_word_boundary() {
        let trigger = default_trigger("Talon");
        assert!(!trigger.matches("@Talonx hi"));
        assert!(!trigger.matches("@Talon_ hi"));
        assert!(trigger.matches("@talon, what's up"));
        assert!(trigger.matches("@talon: hi"));
    }

    #[test]
    fn must_be_at_the_start() {
        let trigger = default_trigger("Talon");
        assert!(!trigger.matches("hey @Talon"));
        assert!(!trigger.matches("Talon hi"));
        assert!(!trigger.matches(""));
    }

    #[test]
    fn ignores_leading_whitespace() {
        let trigger = default_trigger("Talon");
        assert!(trigger.matches("   @Talon hi"));
        assert!(trigger.matches("\n\t@talon hi"));
    }

    #[test]
    fn works_with_non_ascii_names() {
        let trigger = default_trigger("폴");
        assert!(trigger.matches("@폴 안녕"));
        assert!(trigger.matches("@폴"));
        assert!(!trigger.matches("@폴리 안녕"), "폴리 is a different word");
        assert!(!trigger.matches("안녕 @폴"));
    }

    #[test]
    fn names_ending_in_punctuation_still_match() {
        let trigger = default_trigger("Bot!");
        assert!(trigger.matches("@bot! hi"));
        assert!(trigger.matches("@Bot!"));
    }

    #[test]
    fn custom_patterns_are_case_insensitive_too() {
        let trigger = Trigger::new("^@폴|^hey talon").unwrap();
        assert!(trigger.matches("HEY Talon, hi"));
        assert!(trigger.matches("@폴"));
        assert_eq!(trigger.pattern(), "^@폴|^hey talon");
        assert!(Trigger::new("^@(unclosed").is_err());
    }

    #[test]
    fn rewrites_slack_mentions() {
        assert_eq!(rewrite_mention("<@U123> hi", "U123", "Talon"), "@Talon hi");
        assert_eq!(
            rewrite_mention("<@U123|talon> hi", "U123", "Talon"),
            "@Talon hi"
        );
    }

    #[test]
    fn rewrites_discord_mentions() {
        assert_eq!(rewrite_mention("<@123> hi", "123", "Talon"), "@Talon hi");
        assert_eq!(rewrite_mention("<@!123> hi", "123", "Talon"), "@Talon hi");
    }

    #[test]
    fn rewrites_mentions_anywhere_but_only_of_the_bot() {
        assert_eq!(
            rewrite_mention("ask <@U1> and <@U123>, then <@U123>", "U123", "폴"),
            "ask <@U1> and @폴, then @폴"
        );
        // An id that merely starts with the bot's id is someone else.
        assert_eq!(
            rewrite_mention("<@U1234> hi", "U123", "Talon"),
            "<@U1234> hi"
        );
        assert_eq!(
            rewrite_mention("<@&123> role", "123", "Talon"),
            "<@&123> role"
        );
        assert_eq!(
            rewrite_mention("<@U123 no close", "U123", "Talon"),
            "<@U123 no close"
        );
        assert_eq!(rewrite_mention("<@> x", "", "Talon"), "<@> x");
    }

    #[test]
    fn a_rewritten_mention_elsewhere_does_not_trigger() {
        let trigger = default_trigger("Talon");
        let start = rewrite_mention("<@U123> what time is it", "U123", "Talon");
        let middle = rewrite_mention("thanks <@U123>", "U123", "Talon");
        assert!(trigger.matches(&start));
        assert!(!trigger.matches(&middle));
    }

    #[test]
    fn wakes_agent_rules() {
        let trigger = default_trigger("Talon");
        assert!(wakes_agent(true, true, &trigger, "no trigger here"));
        assert!(wakes_agent(false, false, &trigger, "no trigger here"));
        assert!(!wakes_agent(false, true, &trigger, "no trigger here"));
        assert!(wakes_agent(false, true, &trigger, "@talon hi"));
    }
}
