//! Splitting a long chat reply into messages that fit a platform's limit.
//!
//! Discord refuses a message over 2000 UTF-16 code units and Slack truncates
//! text past about 4000 characters, so a long agent reply goes out as several
//! messages. [`split_message`] cuts where a reader expects a pause (paragraph,
//! then line, then sentence, then word), never inside a character or a
//! grapheme cluster (emoji sequences, flags, letters with combining marks), and
//! keeps fenced code blocks rendering as code: a block that must be cut is
//! closed at the end of one part and reopened, language and all, at the start
//! of the next. [`rejoin`] undoes exactly those additions, which lets the tests
//! prove that splitting loses and invents nothing.

use unicode_segmentation::UnicodeSegmentation;

/// How a platform counts the length of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// UTF-16 code units (Discord): characters outside the Basic
    /// Multilingual Plane, such as most emoji, count 2.
    Utf16Units,
    /// Unicode scalar values (Slack).
    Chars,
}

impl Measure {
    fn of_char(self, c: char) -> usize {
        match self {
            Measure::Utf16Units => c.len_utf16(),
            Measure::Chars => 1,
        }
    }

    /// The size of `text` in this measure.
    pub fn of(self, text: &str) -> usize {
        text.chars().map(|c| self.of_char(c)).sum()
    }
}

/// A platform's largest message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: usize,
    pub measure: Measure,
}

/// Discord: 2000 UTF-16 code units per message.
pub const DISCORD_LIMIT: Limit = Limit {
    max: 2000,
    measure: Measure::Utf16Units,
};

/// Slack truncates past 4000 characters; 3900 leaves a margin for the
/// entity escaping Slack applies to `<`, `>` and `&`.
pub const SLACK_LIMIT: Limit = Limit {
    max: 3900,
    measure: Measure::Chars,
};

/// The marker that opens and closes a code block. Only backtick fences are
/// recognised: neither Discord nor Slack renders `~~~` fences as code, so a
/// cut inside one needs no repair.
const FENCE: &str = "```";
/// Added to a part that ends at a line boundary inside a code block.
const CLOSE_AT_LINE_END: &str = "```";
/// Added to a part that ends mid-line inside a code block. The trailing
/// space is invisible (both platforms trim a message's trailing whitespace)
/// but tells [`rejoin`] that the newline before the fence was added as well:
/// without it, "…x\n```" could be either "…x\n" closed or "…x" closed.
const CLOSE_MID_LINE: &str = "\n``` ";
/// Room a part reopening a code block must keep for the block's own text,
/// besides the reopening line and a close. A block whose opening line is too
/// long for that under the limit is cut like prose, without repair, rather
/// than sent as parts that are nearly all fence lines.
const MIN_CODE_ROOM: usize = 16;

/// How far past spaces and tabs a cut looks for a fence marker the next
/// part would start with.
const MAX_INDENT_SEEN: usize = 16;

/// Characters that end a sentence when whitespace follows.
const SENTENCE_STOPS: &[char] = &[
    '.', '!', '?', '…', '。', '！', '？', '．', '؟', '۔', '।', '॥',
];
/// Stops after which a sentence ends even without whitespace (CJK text has
/// no spaces between sentences).
const CJK_STOPS: &[char] = &['。', '！', '？', '．'];
/// Closing quotes, brackets and emphasis that may follow a sentence stop.
const CLOSERS: &[char] = &[
    '"', '\'', ')', ']', '}', '”', '’', '»', '」', '』', '）', '*', '_',
];

/// Splits `text` into the parts to send, in order, each within `limit`.
///
/// Empty or whitespace-only text gives no parts; text that fits is one part,
/// unchanged. Otherwise each part ends at the last break of the best kind
/// that still leaves the part at least half full (half of the room left
/// after a reopened fence line), the kinds best first:
///
/// 1. a blank line outside code, 2. a line break outside code (the start of
///    a code block counts, so a block is kept whole when that is
///    reasonable), 3. a blank line inside code, 4. a line break inside code,
///    5. a sentence end outside code (`. ! ? …` and the like before
///    whitespace, or `。！？` directly), 6. whitespace.
///
/// If no break qualifies the part ends at the last grapheme boundary that
/// fits, however full. Separators (the blank line, newline, space) stay
/// with the part before them, so when no code block was cut the parts
/// concatenate to `text` exactly. Breaks are never placed inside a fence
/// line, nor right before a "```" that is not at the start of a line (the
/// next part would begin with a fence that was not one).
///
/// A code block is a line starting with "```" (after optional spaces or
/// tabs; an info string such as `rust` may follow, but no more backticks)
/// up to the next line starting with "```", or the end of the text if none
/// does. A part that ends inside a block gets "```" appended if it ends with
/// a newline, "\n``` " otherwise, and the next part starts with the block's
/// opening line again; those additions count towards the limit. The last
/// part never gets a close, so an unclosed block in `text` stays unclosed.
///
/// Pathological inputs, handled without panicking or looping:
/// - a grapheme cluster larger than the room in a part is cut between its
///   characters; a character larger than the room (`max` of 0, or 1 with a
///   UTF-16 measure) is sent alone, over the limit; with `max` below 6 a
///   part may exceed it by a character or two where a cut would make
///   [`rejoin`] ambiguous;
/// - a code block whose opening line plus a close plus 16 units does not fit
///   in `max` is cut without repair, as is a fence line longer than a part;
///   such parts may have unbalanced fences;
/// - a whitespace run too long to share a part with visible text is dropped
///   where it would be a part on its own, since platforms reject blank
///   messages; that is the only case in which [`rejoin`] cannot restore the
///   text.
pub fn split_message(text: &str, limit: Limit) -> Vec<String> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    if limit.measure.of(text) <= limit.max {
        return vec![text.to_owned()];
    }
    Splitter::new(text, limit).split()
}

/// Undoes what [`split_message`] added (the fence close and reopen lines):
/// `rejoin(&split_message(t, l)) == t` for every `t` that is not
/// whitespace-only (see [`split_message`] for the one exception). Used by
/// tests.
pub fn rejoin(parts: &[String]) -> String {
    rejoin_segments(parts).concat()
}

/// The stretch of the original text each part carries.
fn rejoin_segments(parts: &[String]) -> Vec<String> {
    let mut original = String::new();
    let mut segments = Vec::with_capacity(parts.len());
    let mut reopened: Option<String> = None;
    for (index, part) in parts.iter().enumerate() {
        let mut body = part.as_str();
        if let Some(opener) = reopened.take() {
            body = body.strip_prefix(opener.as_str()).unwrap_or(body);
        }
        // The last part never gets a close; an earlier one did exactly when
        // it ends in one, inside a block, and the next part reopens it.
        let segment = match parts.get(index + 1) {
            Some(next) => match closed_segment(&original, body) {
                Some((segment, opener)) if next.starts_with(&opener) => {
                    reopened = Some(opener);
                    segment
                }
                _ => body,
            },
            None => body,
        };
        original.push_str(segment);
        segments.push(segment.to_owned());
    }
    segments
}

/// If `body` ends with a close that [`split_message`] adds, and removing it
/// leaves the text (after `original`) inside a code block: the text without
/// the close, and that block's opening line.
fn closed_segment<'a>(original: &str, body: &'a str) -> Option<(&'a str, String)> {
    let segment = match body.strip_suffix(CLOSE_MID_LINE) {
        Some(segment) => Some(segment).filter(|s| !s.is_empty() && !s.ends_with('\n'))?,
        None => body
            .strip_suffix(CLOSE_AT_LINE_END)
            .filter(|s| s.ends_with('\n'))?,
    };
    let so_far = format!("{original}{segment}");
    let (start, end) = body_opener_at_end(&so_far)?;
    Some((segment, so_far[start..end].to_owned()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    Prose,
    Opener,
    Body,
    Closer,
}

/// One line of text, its newline included.
#[derive(Debug, Clone, Copy)]
struct Line {
    start: usize,
    end: usize,
    kind: LineKind,
    /// Byte range of the opening fence line (with its newline) of the block
    /// this line opens, belongs to or closes; unused for prose.
    opener: (usize, usize),
}

/// What follows the fence marker, if `line` starts with one.
fn after_fence_marker(line: &str) -> Option<&str> {
    line.trim_start_matches([' ', '\t']).strip_prefix(FENCE)
}

fn opens_block(line: &str) -> bool {
    after_fence_marker(line).is_some_and(|rest| !rest.trim_start_matches('`').contains('`'))
}

fn classify_lines(text: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut open: Option<(usize, usize)> = None;
    let mut start = 0;
    for raw in text.split_inclusive('\n') {
        let end = start + raw.len();
        let (kind, opener) = match open {
            Some(opener) if after_fence_marker(raw).is_some() => {
                open = None;
                (LineKind::Closer, opener)
            }
            Some(opener) => (LineKind::Body, opener),
            None if opens_block(raw) => {
                open = Some((start, end));
                (LineKind::Opener, (start, end))
            }
            None => (LineKind::Prose, (0, 0)),
        };
        lines.push(Line {
            start,
            end,
            kind,
            opener,
        });
        start = end;
    }
    lines
}

/// The opening line's range if the end of `text` lies inside a code
/// block's body (not inside a fence line). Sees only `text`, as [`rejoin`]
/// does; [`Splitter::zone`] agrees with it wherever a close is added.
fn body_opener_at_end(text: &str) -> Option<(usize, usize)> {
    let last = classify_lines(text).pop()?;
    match last.kind {
        LineKind::Body => Some(last.opener),
        LineKind::Opener if text.ends_with('\n') => Some(last.opener),
        _ => None,
    }
}

/// Where a cut position lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zone {
    Prose,
    /// In the body of the block opened by this line (including the start of
    /// its closing line).
    Code((usize, usize)),
    /// Strictly inside a fence line.
    FenceLine,
}

/// Kinds of break, in order of preference for [`PREFERENCE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Break {
    Paragraph,
    Line,
    CodeParagraph,
    CodeLine,
    Sentence,
    Word,
    Grapheme,
}

const PREFERENCE: [Break; 6] = [
    Break::Paragraph,
    Break::Line,
    Break::CodeParagraph,
    Break::CodeLine,
    Break::Sentence,
    Break::Word,
];

/// How a part ending inside a code block is repaired.
#[derive(Debug, Clone, Copy)]
struct Repair {
    opener: (usize, usize),
    close: &'static str,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    at: usize,
    fill: usize,
    tier: Break,
    /// Visible text on both sides: in the part and in what remains.
    visible: bool,
    /// Acceptable in the normal passes.
    clean: bool,
    /// A cut [`rejoin`] would mistake for a repaired one; never taken.
    ambiguous: bool,
}

struct Splitter<'a> {
    text: &'a str,
    limit: Limit,
    lines: Vec<Line>,
    /// `cost[i]`: the size of `text[..i]`, for every char boundary `i`.
    cost: Vec<usize>,
    /// Grapheme cluster boundaries, ascending, `0` to `text.len()`.
    graphemes: Vec<usize>,
    /// Byte index of the last non-whitespace character.
    last_visible: usize,
}

impl<'a> Splitter<'a> {
    fn new(text: &'a str, limit: Limit) -> Splitter<'a> {
        let mut cost = vec![0; text.len() + 1];
        let mut total = 0;
        for (index, c) in text.char_indices() {
            cost[index] = total;
            total += limit.measure.of_char(c);
        }
        cost[text.len()] = total;
        let mut graphemes: Vec<usize> = text.grapheme_indices(true).map(|(i, _)| i).collect();
        graphemes.push(text.len());
        let last_visible = text
            .char_indices()
            .rev()
            .find(|(_, c)| !c.is_whitespace())
            .map_or(0, |(i, _)| i);
        Splitter {
            text,
            limit,
            lines: classify_lines(text),
            cost,
            graphemes,
            last_visible,
        }
    }

    fn size(&self, from: usize, to: usize) -> usize {
        self.cost[to] - self.cost[from]
    }

    fn split(&self) -> Vec<String> {
        let text = self.text;
        let mut parts = Vec::new();
        let mut start = 0;
        let mut reopen: Option<(usize, usize)> = None;
        // First non-whitespace byte at or after `start`; kept across parts
        // so a huge whitespace run is scanned once, not once per part.
        let mut first_visible = 0;
        while start < text.len() {
            if first_visible < start {
                first_visible = text[start..]
                    .char_indices()
                    .find(|(_, c)| !c.is_whitespace())
                    .map_or(text.len(), |(i, _)| start + i);
            }
            let prefix = reopen.map_or("", |(s, e)| &text[s..e]);
            let room = self.limit.max.saturating_sub(self.limit.measure.of(prefix));
            let end = if self.size(start, text.len()) <= room {
                text.len()
            } else {
                let visible_from = if prefix.is_empty() {
                    first_visible
                } else {
                    start
                };
                self.choose_cut(start, room, visible_from)
            };
            let repair = self.repair_at(end);
            let close = repair.map_or("", |r| r.close);
            let segment = &text[start..end];
            // Only a whitespace run with nowhere else to go: a blank message
            // would be rejected by the platform.
            if !(prefix.is_empty() && close.is_empty() && segment.trim().is_empty()) {
                parts.push(format!("{prefix}{segment}{close}"));
            }
            reopen = repair.map(|r| r.opener);
            start = end;
        }
        parts
    }

    /// The end of the part starting at `start`, with `room` left for text
    /// and close; the part has visible text once it extends past
    /// `visible_from` (`start` if it reopens a code block). Always beyond
    /// `start`, so splitting terminates.
    fn choose_cut(&self, start: usize, room: usize, visible_from: usize) -> usize {
        let text = self.text;
        let mut candidates = Vec::new();
        let from = self.graphemes.partition_point(|&g| g <= start);
        for &at in &self.graphemes[from..] {
            if at >= text.len() {
                break;
            }
            let fill = self.size(start, at);
            if fill > room {
                break;
            }
            if fill + self.close_cost(at) > room {
                continue;
            }
            let ambiguous = self.ambiguous(at);
            let visible = visible_from < at && at <= self.last_visible;
            let clean = !ambiguous && visible && self.cuts_cleanly(at);
            candidates.push(Candidate {
                at,
                fill,
                visible,
                tier: if clean {
                    self.tier(at)
                } else {
                    Break::Grapheme
                },
                clean,
                ambiguous,
            });
        }
        for tier in PREFERENCE {
            let found = candidates
                .iter()
                .rev()
                .find(|c| c.clean && c.tier == tier && 2 * c.fill >= room);
            if let Some(candidate) = found {
                return candidate.at;
            }
        }
        let fallback = candidates
            .iter()
            .rev()
            .find(|c| c.clean)
            .or_else(|| {
                // A fence line longer than the room, or the like.
                let usable = |c: &&Candidate| !c.ambiguous && c.visible;
                candidates.iter().rev().find(usable)
            })
            .or_else(|| candidates.iter().rev().find(|c| !c.ambiguous));
        if let Some(candidate) = fallback {
            return candidate.at;
        }
        // The next grapheme cluster alone is larger than the room: cut
        // between its characters.
        let mut last_fitting = None;
        for (offset, _) in text[start..].char_indices().skip(1) {
            let at = start + offset;
            let fill = self.size(start, at);
            if fill > room {
                break;
            }
            if fill + self.close_cost(at) <= room && !self.ambiguous(at) {
                last_fitting = Some(at);
            }
        }
        if let Some(at) = last_fitting {
            return at;
        }
        // Not even one character fits: send it anyway.
        text[start..]
            .char_indices()
            .skip(1)
            .map(|(offset, _)| start + offset)
            .find(|&at| !self.ambiguous(at))
            .unwrap_or(text.len())
    }

    /// The line containing position `at` (`at < text.len()`).
    fn line_at(&self, at: usize) -> Option<&Line> {
        self.lines.get(self.lines.partition_point(|l| l.end <= at))
    }

    fn zone(&self, at: usize) -> Zone {
        let Some(line) = self.line_at(at) else {
            return Zone::Prose;
        };
        match line.kind {
            LineKind::Body => Zone::Code(line.opener),
            LineKind::Closer if at == line.start => Zone::Code(line.opener),
            LineKind::Prose => Zone::Prose,
            LineKind::Opener if at == line.start => Zone::Prose,
            LineKind::Opener | LineKind::Closer => Zone::FenceLine,
        }
    }

    /// The repair a part ending at `at` needs, if it ends inside a code
    /// block that can be repaired under the limit.
    fn repair_at(&self, at: usize) -> Option<Repair> {
        if at >= self.text.len() {
            return None;
        }
        let Zone::Code(opener) = self.zone(at) else {
            return None;
        };
        let measure = self.limit.measure;
        let opener_size = measure.of(&self.text[opener.0..opener.1]);
        if opener_size + measure.of(CLOSE_MID_LINE) + MIN_CODE_ROOM > self.limit.max {
            return None;
        }
        let close = if self.text[..at].ends_with('\n') {
            CLOSE_AT_LINE_END
        } else {
            CLOSE_MID_LINE
        };
        Some(Repair { opener, close })
    }

    fn close_cost(&self, at: usize) -> usize {
        self.repair_at(at)
            .map_or(0, |r| self.limit.measure.of(r.close))
    }

    /// True if a part ending at `at` without repair would end the way a
    /// repaired one does (a fence marker cut off at the start of its line),
    /// which [`rejoin`] would then strip.
    fn ambiguous(&self, at: usize) -> bool {
        let head = &self.text[..at];
        [CLOSE_AT_LINE_END, &CLOSE_MID_LINE[1..]]
            .iter()
            .any(|tail| {
                head.strip_suffix(tail)
                    .is_some_and(|rest| rest.is_empty() || rest.ends_with('\n'))
            })
    }

    /// Not inside a fence line, and not leaving the next part to start with
    /// a fence marker that was mid-line here.
    fn cuts_cleanly(&self, at: usize) -> bool {
        let text = self.text;
        if self.zone(at) == Zone::FenceLine {
            return false;
        }
        if text[..at].ends_with('\n') {
            return true;
        }
        // Looking a bounded way past blanks keeps a huge whitespace run from
        // costing its length at every cut position inside it.
        let rest = &text[at..];
        let indent = rest
            .bytes()
            .take(MAX_INDENT_SEEN)
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        !rest[indent..].starts_with(FENCE)
    }

    fn tier(&self, at: usize) -> Break {
        let text = self.text;
        let (head, tail) = text.split_at(at);
        let (Some(before), Some(after)) = (head.chars().next_back(), tail.chars().next()) else {
            return Break::Grapheme;
        };
        let zone = self.zone(at);
        let in_code = matches!(zone, Zone::Code(_));
        if before == '\n' {
            if let Zone::Code(opener) = zone {
                // Right after the opening line or right before the closing
                // one: the cut would leave an empty block behind.
                let at_closer = self.line_at(at).is_some_and(|l| l.kind == LineKind::Closer);
                if at == opener.1 || at_closer {
                    return Break::Grapheme;
                }
            }
            let after_blank_line = self
                .lines
                .get(self.lines.partition_point(|l| l.end < at))
                .is_some_and(|l| l.end == at && text[l.start..l.end].trim().is_empty());
            return match (in_code, after_blank_line) {
                (false, true) => Break::Paragraph,
                (false, false) => Break::Line,
                (true, true) => Break::CodeParagraph,
                (true, false) => Break::CodeLine,
            };
        }
        if before.is_whitespace() && !after.is_whitespace() {
            let stop = head
                .trim_end()
                .trim_end_matches(CLOSERS)
                .chars()
                .next_back();
            return if !in_code && stop.is_some_and(|c| SENTENCE_STOPS.contains(&c)) {
                Break::Sentence
            } else {
                Break::Word
            };
        }
        let cjk_stop = head
            .trim_end_matches(CLOSERS)
            .chars()
            .next_back()
            .is_some_and(|c| CJK_STOPS.contains(&c));
        if !in_code && cjk_stop && !after.is_whitespace() && !CLOSERS.contains(&after) {
            return Break::Sentence;
        }
        Break::Grapheme
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    fn chars(max: usize) -> Limit {
        Limit {
            max,
            measure: Measure::Chars,
        }
    }

    fn fences_balanced(part: &str) -> bool {
        classify_lines(part)
            .last()
            .is_none_or(|l| !matches!(l.kind, LineKind::Opener | LineKind::Body))
    }

    fn grapheme_boundaries(text: &str) -> Vec<usize> {
        let mut boundaries: Vec<usize> = text.grapheme_indices(true).map(|(i, _)| i).collect();
        boundaries.push(text.len());
        boundaries
    }

    #[test]
    fn text_that_fits_is_one_part_unchanged() {
        let text = "  hello\n\nworld  \n";
        assert_eq!(split_message(text, chars(100)), vec![text.to_owned()]);
        let exact = "x".repeat(2000);
        assert_eq!(split_message(&exact, DISCORD_LIMIT), vec![exact.clone()]);
    }

    #[test]
    fn whitespace_only_gives_no_parts() {
        assert!(split_message("", DISCORD_LIMIT).is_empty());
        assert!(split_message(" \n\t\n  ", DISCORD_LIMIT).is_empty());
        assert!(split_message(&" ".repeat(5000), chars(10)).is_empty());
    }

    #[test]
    fn paragraph_break_is_preferred_over_a_later_line_break() {
        let text = format!(
            "{}\n\n{}\n{}",
            "a".repeat(60),
            "b".repeat(20),
            "c".repeat(30)
        );
        let parts = split_message(&text, chars(100));
        assert_eq!(parts[0], format!("{}\n\n", "a".repeat(60)));
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn line_break_is_preferred_over_a_later_sentence_end() {
        let text = format!("{}\n{}. {}", "a".repeat(55), "b".repeat(20), "c".repeat(40));
        let parts = split_message(&text, chars(100));
        assert_eq!(parts[0], format!("{}\n", "a".repeat(55)));
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn sentence_end_is_preferred_over_a_later_word_break() {
        let text = format!("{}. {} {}", "a".repeat(55), "b".repeat(20), "c".repeat(40));
        let parts = split_message(&text, chars(100));
        assert_eq!(parts[0], format!("{}. ", "a".repeat(55)));
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn cjk_sentence_end_needs_no_space() {
        let text = format!("{}。{}", "字".repeat(70), "字".repeat(50));
        let parts = split_message(&text, chars(100));
        assert_eq!(parts[0], format!("{}。", "字".repeat(70)));
    }

    #[test]
    fn a_break_leaving_the_part_under_half_full_gives_way_to_a_lesser_one() {
        let text = format!(
            "{}\n\n{}\n{}",
            "a".repeat(10),
            "b".repeat(60),
            "c".repeat(40)
        );
        let parts = split_message(&text, chars(100));
        assert_eq!(
            parts[0],
            format!("{}\n\n{}\n", "a".repeat(10), "b".repeat(60))
        );
    }

    #[test]
    fn a_word_longer_than_the_limit_is_cut_at_grapheme_boundaries() {
        let text = "🇰🇷".repeat(30);
        let parts = split_message(&text, chars(7));
        assert!(parts.iter().all(|p| p.chars().count() <= 7));
        assert!(
            parts.iter().all(|p| p.chars().count() % 2 == 0),
            "{parts:?}"
        );
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn a_5000_character_reply_is_three_discord_parts() {
        let words = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur"];
        let mut text = String::new();
        for word in words.iter().cycle() {
            if text.len() + word.len() + 1 > 5000 {
                break;
            }
            text.push_str(word);
            text.push(' ');
        }
        text.truncate(text.trim_end().len());
        let parts = split_message(&text, DISCORD_LIMIT);
        assert_eq!(parts.len(), 3);
        for part in &parts {
            assert!(part.encode_utf16().count() <= 2000);
            assert!(part.encode_utf16().count() >= 900, "no tiny part");
        }
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn emoji_count_two_units_on_discord() {
        let text = "😀".repeat(1500);
        let parts = split_message(&text, DISCORD_LIMIT);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].chars().count(), 1000);
        assert_eq!(parts[0].encode_utf16().count(), 2000);
        assert_eq!(split_message(&text, SLACK_LIMIT), vec![text.clone()]);
    }

    #[test]
    fn a_long_code_block_is_closed_and_reopened_with_its_language() {
        let mut text = String::from("Here is the code:\n\n```rust\n");
        for n in 0..200 {
            text.push_str(&format!("let value_{n} = {n};\n"));
        }
        text.push_str("```\n\nDone.");
        let parts = split_message(&text, DISCORD_LIMIT);
        assert!(parts.len() >= 2);
        assert!(parts[0].starts_with("Here is the code:\n\n```rust\nlet value_0"));
        assert!(parts[0].ends_with(";\n```"), "closed at a line end");
        for part in &parts[1..] {
            assert!(part.starts_with("```rust\nlet value_"), "{part}");
        }
        for part in &parts {
            assert!(part.encode_utf16().count() <= 2000);
            assert!(fences_balanced(part), "{part}");
        }
        assert!(parts.last().is_some_and(|p| p.ends_with("```\n\nDone.")));
        assert_eq!(rejoin(&parts), text);
    }

    #[test]
    fn a_code_line_longer_than_a_part_is_closed_mid_line() {
        let text = format!("```python\n{}\n```\n", "x = 1; ".repeat(40));
        let parts = split_message(&text, chars(100));
        assert!(parts.len() >= 3);
        assert!(parts[0].ends_with("\n``` "), "{:?}", parts[0]);
        assert!(parts[1].starts_with("```python\n"));
        for part in &parts {
            assert!(part.chars().count() <= 100);
            assert!(fences_balanced(part), "{part:?}");
        }
        assert_eq!(rejoin(&parts), text);
    }

    #[test]
    fn a_code_block_is_kept_whole_when_it_can_start_the_next_part() {
        let code = format!("```\n{}```\n", "line\n".repeat(8));
        let text = format!("{}\n{code}{}", "a".repeat(60), "b ".repeat(30));
        let parts = split_message(&text, chars(100));
        assert_eq!(parts[0], format!("{}\n", "a".repeat(60)));
        assert!(parts[1].starts_with(&code));
        assert_eq!(rejoin(&parts), text);
    }

    #[test]
    fn a_real_closing_fence_at_a_cut_is_kept() {
        let text = format!("```\n{}```\n{}", "a\n".repeat(20), "b ".repeat(50));
        let parts = split_message(&text, chars(60));
        assert_eq!(parts[0], format!("```\n{}```\n", "a\n".repeat(20)));
        assert_eq!(rejoin(&parts), text);
        assert_eq!(parts.concat(), text, "nothing was added");
    }

    #[test]
    fn an_unclosed_fence_is_repaired_between_parts_and_left_open_at_the_end() {
        let mut text = String::from("Output:\n```python\n");
        for n in 0..40 {
            text.push_str(&format!("print({n})\n"));
        }
        let parts = split_message(&text, chars(120));
        assert!(parts.len() >= 3);
        let (last, earlier) = parts.split_last().expect("several parts");
        for part in earlier {
            assert!(fences_balanced(part), "{part}");
            assert!(part.chars().count() <= 120);
        }
        assert!(last.starts_with("```python\n"));
        assert!(!fences_balanced(last), "left open as in the text");
        assert_eq!(rejoin(&parts), text);
    }

    #[test]
    fn without_room_for_repair_a_block_is_cut_like_prose() {
        let text = format!("```python\n{}```\n", "ab\n".repeat(20));
        let parts = split_message(&text, chars(20));
        assert!(parts.iter().all(|p| p.chars().count() <= 20));
        assert_eq!(parts.concat(), text, "no fence lines added");
        assert_eq!(rejoin(&parts), text);
    }

    #[test]
    fn tiny_limits_neither_panic_nor_loop() {
        let text = "```rust\nfn main() {}\n```\n👨‍👩‍👧‍👦 e\u{301} שָׁלוֹם\n``` x\n```";
        for max in 0..12 {
            for measure in [Measure::Chars, Measure::Utf16Units] {
                let limit = Limit { max, measure };
                let parts = split_message(text, limit);
                assert!(!parts.is_empty());
                assert!(parts.iter().all(|p| !p.trim().is_empty()));
                if max >= 6 {
                    assert!(
                        parts.iter().all(|p| measure.of(p) <= max),
                        "{limit:?} {parts:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_fence_line_longer_than_a_part_is_cut_without_losing_its_newline() {
        // Found by the property test: the cut once fell before the final
        // newline, which then made a blank part and was dropped.
        let text = "``````rust abc\n";
        let parts = split_message(text, chars(14));
        assert!(parts.iter().all(|p| p.chars().count() <= 14));
        assert_eq!(rejoin(&parts), text);
    }

    #[test]
    fn a_whitespace_run_longer_than_a_part_is_dropped() {
        let text = format!("a{}b", " ".repeat(50));
        let parts = split_message(&text, chars(20));
        assert!(parts
            .iter()
            .all(|p| !p.trim().is_empty() && p.chars().count() <= 20));
        assert_eq!(parts.first().map(|p| p.trim()), Some("a"));
        assert_eq!(parts.last().map(|p| p.trim()), Some("b"));
    }

    const EMOJI: &[&str] = &[
        "😀",
        "👍🏽",
        "👨\u{200d}👩\u{200d}👧\u{200d}👦",
        "🇰🇷",
        "🇯🇵",
        "❤\u{fe0f}",
        "🧑🏿\u{200d}💻",
        "👩🏻\u{200d}🦰",
    ];
    const RTL: &[&str] = &["שָׁלוֹם", "בְּרֵאשִׁית", "מַה־נִּשְׁמַע", "مَرْحَبًا", "السَّلَامُ", "عَلَيْكُمْ"];
    const CJK: &[&str] = &[
        "你好世界",
        "日本語のテキスト。",
        "한국어입니다",
        "漢字。かな",
        "中文句子！",
    ];
    const MARKED: &[&str] = &[
        "e\u{301}te\u{301}",
        "n\u{303}o",
        "Z\u{335}\u{336}a\u{308}\u{304}",
    ];

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            10 => "[a-zA-Z0-9]{1,10}",
            2 => prop::sample::select(EMOJI).prop_map(str::to_owned),
            2 => prop::sample::select(RTL).prop_map(str::to_owned),
            2 => prop::sample::select(CJK).prop_map(str::to_owned),
            1 => prop::sample::select(MARKED).prop_map(str::to_owned),
        ]
    }

    fn prose() -> impl Strategy<Value = String> {
        let separator =
            prop::sample::select(&[" ", " ", " ", " ", ". ", "! ", "? ", ", ", "\n", "\n\n"][..]);
        prop::collection::vec((word(), separator), 1..30).prop_map(|pairs| {
            let mut text: String = pairs.iter().map(|(w, s)| format!("{w}{s}")).collect();
            text.truncate(text.trim_end().len());
            text.push_str("\n\n");
            text
        })
    }

    fn code_lines() -> impl Strategy<Value = String> {
        let line = (
            prop::sample::select(&["", "  "][..]),
            prop::collection::vec(word(), 0..8),
        )
            .prop_map(|(indent, words)| match words.is_empty() {
                true => "\n".to_owned(),
                false => format!("{indent}{}\n", words.join(" ")),
            });
        prop::collection::vec(line, 0..12).prop_map(|lines| lines.concat())
    }

    fn opener() -> impl Strategy<Value = String> {
        prop::sample::select(&["", "rust", "python", "js"][..])
            .prop_map(|lang| format!("```{lang}\n"))
    }

    fn code_block() -> impl Strategy<Value = String> {
        (opener(), code_lines()).prop_map(|(opener, body)| format!("{opener}{body}```\n"))
    }

    /// Prose and closed code blocks; fences balanced.
    fn document(blocks: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![3 => prose(), 1 => code_block()], blocks),
            any::<bool>(),
        )
            .prop_map(|(blocks, trim_end)| {
                let mut text = blocks.concat();
                if trim_end {
                    text.truncate(text.trim_end().len());
                }
                text
            })
    }

    fn small_limit() -> impl Strategy<Value = Limit> {
        (
            20usize..200,
            prop_oneof![Just(Measure::Utf16Units), Just(Measure::Chars)],
        )
            .prop_map(|(max, measure)| Limit { max, measure })
    }

    /// What every split must satisfy; `balanced`: the text's fences are
    /// balanced and the limit leaves room to repair every block.
    fn check(text: &str, limit: Limit, balanced: bool) -> Result<(), TestCaseError> {
        let parts = split_message(text, limit);
        prop_assert_eq!(&parts, &split_message(text, limit), "deterministic");
        prop_assert!(!parts.is_empty());
        for part in &parts {
            prop_assert!(
                limit.measure.of(part) <= limit.max,
                "part over {:?}: {:?}",
                limit,
                part
            );
            prop_assert!(!part.trim().is_empty(), "blank part");
            if balanced {
                prop_assert!(fences_balanced(part), "unbalanced part {:?}", part);
            }
        }
        prop_assert_eq!(rejoin(&parts), text);
        let graphemes = grapheme_boundaries(text);
        let mut boundary = 0;
        for segment in rejoin_segments(&parts) {
            boundary += segment.len();
            prop_assert!(
                graphemes.binary_search(&boundary).is_ok(),
                "cut inside a grapheme at {}",
                boundary
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn splits_under_small_limits(text in document(1..6), limit in small_limit()) {
            // Every generated opening line (≤ 10) + close (5) + 16 fits in 40.
            check(&text, limit, limit.max >= 40)?;
        }

        #[test]
        fn splits_with_an_unclosed_block(
            text in document(1..4),
            opener in opener(),
            body in code_lines(),
            limit in small_limit(),
        ) {
            let text = format!("{text}{opener}x\n{body}");
            check(&text, limit, false)?;
            for part in split_message(&text, limit).iter().rev().skip(1) {
                if limit.max >= 40 {
                    prop_assert!(fences_balanced(part), "unbalanced part {:?}", part);
                }
            }
        }

        /// Fence markers everywhere, tiny limits: whatever is cut, rejoin
        /// must tell added fences from the text's own.
        #[test]
        fn rejoin_tells_added_fences_from_the_texts_own(
            tokens in prop::collection::vec(
                (
                    prop::sample::select(
                        &["```", "```rust", "``` ", "`", "``", "abc", "x", "😀", "é", "ש\u{5b8}"][..],
                    ),
                    prop::sample::select(&["\n", " ", ""][..]),
                ),
                1..80,
            ),
            max in 8usize..48,
            utf16 in any::<bool>(),
        ) {
            let text: String = tokens.iter().map(|(t, s)| format!("{t}{s}")).collect();
            let measure = if utf16 { Measure::Utf16Units } else { Measure::Chars };
            check(&text, Limit { max, measure }, false)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn splits_under_the_real_limits(text in document(10..60), discord in any::<bool>()) {
            let limit = if discord { DISCORD_LIMIT } else { SLACK_LIMIT };
            check(&text, limit, true)?;
        }
    }
}
