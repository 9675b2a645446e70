//! The runner's side of the pipes: bounded line reading from stdin, one
//! flushed JSON line per message on stdout, diagnostics on stderr, and the
//! loop that moves them between the pipes and the [`Runner`].
//!
//! Every write to stdout goes through one [`Writer`] on the loop's thread,
//! also the progress lines sent while a tool runs, so two lines can never
//! interleave.

use std::io::{self, BufRead, Write};

use crate::runner::{Emit, Head, Runner, Step, Unreadable};
use crate::wire::{self, HostToRunner, RunnerToHost, MAX_LINE_BYTES};
use crate::EXIT_BROKEN;

/// How much of a line too long to read is kept, to tell what it was.
const HEAD_BYTES: usize = 128;

/// One read from stdin.
#[derive(Debug, PartialEq)]
pub(crate) enum LineRead {
    /// A complete line (without its newline) is in the buffer.
    Line,
    /// A line longer than the limit was read and thrown away whole; the
    /// buffer holds its first bytes.
    TooLong {
        bytes: usize,
    },
    Eof,
}

/// Reads one line of at most `max` bytes into `buf`. A longer line is
/// consumed to its end but never buffered (only its first [`HEAD_BYTES`],
/// at most `max`, are left in `buf`), so a hostile or broken peer cannot
/// make the runner grow without bound.
pub(crate) fn read_line_bounded(
    input: &mut impl BufRead,
    max: usize,
    buf: &mut Vec<u8>,
) -> io::Result<LineRead> {
    buf.clear();
    let mut too_long = false;
    let mut bytes = 0usize;
    let mut saw_any = false;
    loop {
        let available = match input.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            // A last line without a newline still counts.
            return Ok(match (saw_any, too_long) {
                (false, _) => LineRead::Eof,
                (true, false) => LineRead::Line,
                (true, true) => LineRead::TooLong { bytes },
            });
        }
        saw_any = true;
        let newline = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        bytes += chunk.len();
        if !too_long && buf.len() + chunk.len() <= max {
            buf.extend_from_slice(chunk);
        } else if !too_long {
            too_long = true;
            let head = HEAD_BYTES.min(max);
            let room = head.saturating_sub(buf.len());
            buf.truncate(head);
            buf.extend_from_slice(&chunk[..room.min(chunk.len())]);
        }
        let used = chunk.len() + usize::from(newline.is_some());
        input.consume(used);
        if newline.is_some() {
            return Ok(if too_long {
                LineRead::TooLong { bytes }
            } else {
                LineRead::Line
            });
        }
    }
}

/// Parses one protocol line; `None` for a blank line, which is skipped quietly.
pub(crate) fn parse_line(line: &[u8]) -> Option<Result<HostToRunner, String>> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return None;
    }
    Some(serde_json::from_slice(trimmed).map_err(|e| e.to_string()))
}

/// Reads the `type` tag and the `request_id` after it from the first bytes
/// of a line, in the exact shape the host writes (`{"type":"…","request_id":N`);
/// anything else tells nothing.
fn sniff(line: &[u8]) -> Head {
    let Some(rest) = line.trim_ascii_start().strip_prefix(br#"{"type":""#) else {
        return Head::default();
    };
    let Some(end) = rest.iter().position(|&b| b == b'"') else {
        return Head::default();
    };
    let tag = &rest[..end];
    if tag.is_empty() || !tag.iter().all(|&b| b.is_ascii_lowercase() || b == b'_') {
        return Head::default();
    }
    let request_id = rest[end + 1..]
        .strip_prefix(br#","request_id":"#)
        .and_then(|digits| {
            let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
        });
    Head {
        tag: Some(String::from_utf8_lossy(tag).into_owned()),
        request_id,
    }
}

fn write_message(out: &mut impl Write, message: &RunnerToHost) -> io::Result<()> {
    let line = wire::encode_line(message).map_err(io::Error::other)?;
    out.write_all(&line)?;
    // The host acts on every line as it comes: never leave one in a buffer.
    out.flush()
}

/// Writes every message at once, whole. After a failed write it writes
/// nothing more and keeps the error; the loop then exits.
struct Writer<'a, W: Write> {
    output: &'a mut W,
    failed: Option<io::Error>,
}

impl<W: Write> Emit for Writer<'_, W> {
    fn emit(&mut self, message: RunnerToHost) {
        if self.failed.is_none() {
            if let Err(error) = write_message(self.output, &message) {
                self.failed = Some(error);
            }
        }
    }
}

/// A line already read (to see which runtime the start asks for).
pub(crate) type FirstLine = (io::Result<LineRead>, Vec<u8>);

/// Drives `runner` from `input` to `output` until it exits; returns the exit code.
#[cfg(test)]
pub fn run(
    runner: &mut Runner,
    input: &mut impl BufRead,
    output: &mut impl Write,
    diag: &mut impl Write,
) -> u8 {
    run_after(runner, None, input, output, diag)
}

/// [`run`], with the first line already read by the caller.
pub(crate) fn run_after(
    runner: &mut Runner,
    mut first: Option<FirstLine>,
    input: &mut impl BufRead,
    output: &mut impl Write,
    diag: &mut impl Write,
) -> u8 {
    let mut out = Writer {
        output,
        failed: None,
    };
    let mut buf = Vec::new();
    loop {
        let read = match first.take() {
            Some((read, line)) => {
                buf = line;
                read
            }
            None => read_line_bounded(input, MAX_LINE_BYTES, &mut buf),
        };
        let step = match read {
            Ok(LineRead::Eof) => runner.on_eof(),
            Ok(LineRead::TooLong { bytes }) => {
                let head = sniff(&buf);
                runner.on_unreadable(Unreadable::TooLong { bytes, head }, &mut out)
            }
            Ok(LineRead::Line) => match parse_line(&buf) {
                None => Step::default(),
                Some(Ok(message)) => runner.on_message_with(message, &mut out),
                Some(Err(error)) => {
                    let head = sniff(&buf);
                    runner.on_unreadable(Unreadable::Garbled { error, head }, &mut out)
                }
            },
            Err(error) => {
                let _ = writeln!(diag, "agent-runner: reading stdin failed: {error}");
                return EXIT_BROKEN;
            }
        };
        if let Some(note) = &step.note {
            let _ = writeln!(diag, "agent-runner: {note}");
        }
        for message in step.send {
            out.emit(message);
        }
        if let Some(error) = out.failed.take() {
            let _ = writeln!(diag, "agent-runner: writing stdout failed: {error}");
            return EXIT_BROKEN;
        }
        if let Some(code) = step.exit {
            return code;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    use crate::runner::test_support::*;
    use crate::runner::Limits;
    use crate::wire::{ErrorKind, RunResult, RunStatus};

    #[test]
    fn bounded_reader_discards_long_lines_whole() {
        let data = b"short\nthis line is too long\nok\nlast-without-newline";
        // A tiny BufReader capacity forces the long line across several fills.
        let mut input = io::BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_bounded(&mut input, 8, &mut buf).unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"short");
        assert_eq!(
            read_line_bounded(&mut input, 8, &mut buf).unwrap(),
            LineRead::TooLong { bytes: 21 }
        );
        assert_eq!(
            read_line_bounded(&mut input, 8, &mut buf).unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"ok");
        assert_eq!(
            read_line_bounded(&mut input, 8, &mut buf).unwrap(),
            LineRead::TooLong { bytes: 20 }
        );
        assert_eq!(
            read_line_bounded(&mut input, 8, &mut buf).unwrap(),
            LineRead::Eof
        );
    }

    #[test]
    fn bounded_reader_accepts_a_line_of_exactly_the_limit() {
        let mut input = io::BufReader::with_capacity(3, &b"12345678\n"[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_bounded(&mut input, 8, &mut buf).unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"12345678");
    }

    fn line(message: &HostToRunner) -> String {
        String::from_utf8(wire::encode_line(message).unwrap()).unwrap()
    }

    fn decode(output: &[u8]) -> Vec<RunnerToHost> {
        output
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn run_skips_garbage_and_blank_lines_and_exits_on_close() {
        let input = format!(
            "not json\n\n{{\"type\":\"bogus\"}}\n{}{}{}",
            line(&HostToRunner::Start(start("ping"))),
            line(&response(1, ok("msg_1", "pong"))),
            line(&HostToRunner::Close),
        );
        let (mut out, mut diag) = (Vec::new(), Vec::new());
        let code = run(&mut runner(), &mut input.as_bytes(), &mut out, &mut diag);
        assert_eq!(code, 0);
        let sent = decode(&out);
        assert_eq!(sent.len(), 3);
        assert_eq!(request_of(&sent[0]).0, 1);
        assert_eq!(
            sent[1],
            RunnerToHost::Output {
                text: "pong".into()
            }
        );
        assert_eq!(result_of(&sent[2]).status, RunStatus::Success);
        let diag = String::from_utf8(diag).unwrap();
        assert_eq!(diag.matches("does not parse").count(), 2, "{diag}");
    }

    #[test]
    fn run_exits_0_on_eof_after_a_turn() {
        let input = format!(
            "{}{}",
            line(&HostToRunner::Start(start("ping"))),
            line(&response(1, ok("msg_1", "pong")))
        );
        let (mut out, mut diag) = (Vec::new(), Vec::new());
        assert_eq!(
            run(&mut runner(), &mut input.as_bytes(), &mut out, &mut diag),
            0
        );
        assert_eq!(decode(&out).len(), 3);
    }

    #[test]
    fn bounded_reader_keeps_the_head_of_a_long_line() {
        let mut long = b"{\"type\":\"follow_up\",\"prompt\":\"".to_vec();
        long.extend(std::iter::repeat_n(b'x', 1000));
        long.extend_from_slice(b"\"}\nnext\n");
        let mut input = io::BufReader::with_capacity(7, &long[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_bounded(&mut input, 500, &mut buf).unwrap(),
            LineRead::TooLong { bytes: 1032 }
        );
        assert_eq!(buf.len(), HEAD_BYTES);
        assert_eq!(buf[..], long[..HEAD_BYTES]);
        assert_eq!(sniff(&buf).tag.as_deref(), Some("follow_up"));
        // The head never exceeds the limit itself.
        let mut input = io::BufReader::with_capacity(7, &long[..]);
        read_line_bounded(&mut input, 10, &mut buf).unwrap();
        assert_eq!(buf[..], long[..10]);
        assert_eq!(
            read_line_bounded(&mut input, 10, &mut buf).unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"next");
    }

    #[test]
    fn sniff_reads_the_tag_and_request_id_the_host_writes_first() {
        let cases = [
            (HostToRunner::Start(start("hi")), "start", None),
            (
                HostToRunner::FollowUp {
                    prompt: "hi".into(),
                },
                "follow_up",
                None,
            ),
            (HostToRunner::Close, "close", None),
            (response(42, ok("msg_1", "hi")), "model_response", Some(42)),
            (
                HostToRunner::HostResponse {
                    request_id: 7,
                    result: wire::HostResult::Ok {
                        content: "ok".into(),
                    },
                },
                "host_response",
                Some(7),
            ),
        ];
        for (message, tag, request_id) in cases {
            let head = sniff(line(&message).as_bytes());
            assert_eq!(head.tag.as_deref(), Some(tag), "{message:?}");
            assert_eq!(head.request_id, request_id, "{message:?}");
        }
        for noise in [
            &b"not json"[..],
            b"",
            b"{\"prompt\":\"x\"}",
            b"{\"type\":\"Bad Tag\"}",
        ] {
            assert_eq!(sniff(noise), Head::default());
        }
    }

    /// A message whose line is one byte longer than it may be, with its size.
    fn too_long(make: impl Fn(&str) -> HostToRunner) -> (String, usize) {
        let short = line(&make("")).len() - 1;
        let long = line(&make(&"x".repeat(MAX_LINE_BYTES + 1 - short)));
        let bytes = long.len() - 1;
        assert_eq!(bytes, MAX_LINE_BYTES + 1);
        (long, bytes)
    }

    fn run_input(
        runner: &mut crate::runner::Runner,
        input: &str,
    ) -> (u8, Vec<RunnerToHost>, String) {
        let (mut out, mut diag) = (Vec::new(), Vec::new());
        let code = run(runner, &mut input.as_bytes(), &mut out, &mut diag);
        (code, decode(&out), String::from_utf8(diag).unwrap())
    }

    /// An error result that names the size and the limit, and reads to the
    /// host as nothing but a failed batch (no stale session, no retry).
    fn assert_too_long_error(result: &RunResult, bytes: usize) {
        assert_eq!(result.status, RunStatus::Error);
        assert_eq!(result.error_kind, Some(ErrorKind::Permanent));
        let error = result.error.as_deref().unwrap_or_default();
        assert!(error.contains(&format!("{bytes} bytes")), "{error}");
        assert!(
            error.contains(&format!("{MAX_LINE_BYTES} bytes")),
            "{error}"
        );
        assert!(!error.contains("session"), "{error}");
    }

    #[test]
    fn run_answers_a_start_too_long_to_read_and_a_later_start_still_works() {
        let (long, bytes) = too_long(|prompt| HostToRunner::Start(start(prompt)));
        let input = format!(
            "{long}{}{}{}",
            line(&HostToRunner::Start(start("ping"))),
            line(&response(1, ok("msg_1", "pong"))),
            line(&HostToRunner::Close),
        );
        let (code, sent, diag) = run_input(&mut runner(), &input);
        assert_eq!(code, 0);
        assert_eq!(sent.len(), 4, "{sent:?}");
        let refused = result_of(&sent[0]);
        assert_too_long_error(refused, bytes);
        assert!(refused
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("start"));
        // Not started: no session to name, so the host keeps what it has.
        assert_eq!(refused.session_id, None);
        assert_eq!(refused.last_assistant_id, None);
        assert_eq!(request_of(&sent[1]).0, 1);
        let served = result_of(&sent[3]);
        assert_eq!(served.status, RunStatus::Success);
        assert_eq!(served.session_id.as_deref(), Some("fresh"));
        assert!(diag.contains("discarded a"), "{diag}");
    }

    #[test]
    fn run_answers_a_follow_up_too_long_to_read_between_turns() {
        let (long, bytes) = too_long(|prompt| HostToRunner::FollowUp {
            prompt: prompt.into(),
        });
        let input = format!(
            "{}{}{long}{}{}{}",
            line(&HostToRunner::Start(start("ping"))),
            line(&response(1, ok("msg_1", "pong"))),
            line(&HostToRunner::FollowUp {
                prompt: "next".into()
            }),
            line(&response(2, ok("msg_2", "second"))),
            line(&HostToRunner::Close),
        );
        let (code, sent, _) = run_input(&mut runner(), &input);
        assert_eq!(code, 0);
        assert_eq!(sent.len(), 7, "{sent:?}");
        let anchor = result_of(&sent[2]).last_assistant_id.clone();
        let refused = result_of(&sent[3]);
        assert_too_long_error(refused, bytes);
        // The run's session, still anchored at the last committed turn.
        assert_eq!(refused.session_id.as_deref(), Some("fresh"));
        assert_eq!(refused.last_assistant_id, anchor);
        let (id, request) = request_of(&sent[4]);
        assert_eq!(id, 2);
        assert_eq!(
            request.messages.last().map(|m| m.content.clone()),
            Some(vec![text("next")])
        );
        assert_eq!(result_of(&sent[6]).status, RunStatus::Success);
    }

    #[test]
    fn run_answers_a_follow_up_too_long_during_a_turn_in_its_place_after_that_turn() {
        let (long, bytes) = too_long(|prompt| HostToRunner::FollowUp {
            prompt: prompt.into(),
        });
        let input = format!(
            "{}{long}{}{}{}{}",
            line(&HostToRunner::Start(start("ping"))),
            line(&HostToRunner::FollowUp {
                prompt: "next".into()
            }),
            line(&response(1, ok("msg_1", "pong"))),
            line(&response(2, ok("msg_2", "second"))),
            line(&HostToRunner::Close),
        );
        let (code, sent, _) = run_input(&mut runner(), &input);
        assert_eq!(code, 0);
        assert_eq!(sent.len(), 7, "{sent:?}");
        // Results come in the order the host handed the batches over.
        assert_eq!(result_of(&sent[2]).status, RunStatus::Success);
        assert_too_long_error(result_of(&sent[3]), bytes);
        let (id, request) = request_of(&sent[4]);
        assert_eq!(id, 2);
        assert_eq!(request.messages.len(), 3, "the refused prompt is not in it");
        assert_eq!(result_of(&sent[6]).status, RunStatus::Success);
    }

    #[test]
    fn run_fails_the_turn_whose_model_response_is_too_long_and_serves_the_next() {
        let (long, bytes) = too_long(|text| response(1, ok("msg_1", text)));
        let input = format!(
            "{}{long}{}{}{}",
            line(&HostToRunner::Start(start("ping"))),
            line(&HostToRunner::FollowUp {
                prompt: "again".into()
            }),
            line(&response(2, ok("msg_2", "pong"))),
            line(&HostToRunner::Close),
        );
        let (code, sent, _) = run_input(&mut runner(), &input);
        assert_eq!(code, 0);
        assert_eq!(sent.len(), 5, "{sent:?}");
        let failed = result_of(&sent[1]);
        assert_too_long_error(failed, bytes);
        assert!(failed
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("model response"));
        assert_eq!(failed.session_id.as_deref(), Some("fresh"));
        assert_eq!(request_of(&sent[2]).0, 2);
        assert_eq!(result_of(&sent[4]).status, RunStatus::Success);
    }

    #[test]
    fn run_answers_unreadable_start_and_follow_up_lines_but_not_noise() {
        let input = format!(
            "{{\"type\":\"start\",\"protocol\":1}}\nnot json\n{}{}{{\"type\":\"follow_up\"}}\n\
             {{\"type\":\"bogus\"}}\n[1,2]\n{}",
            line(&HostToRunner::Start(start("ping"))),
            line(&response(1, ok("msg_1", "pong"))),
            line(&HostToRunner::Close),
        );
        let (code, sent, diag) = run_input(&mut runner(), &input);
        assert_eq!(code, 0);
        assert_eq!(sent.len(), 5, "{sent:?}");
        let start_refused = result_of(&sent[0]);
        assert_eq!(start_refused.status, RunStatus::Error);
        assert_eq!(start_refused.session_id, None);
        assert_eq!(request_of(&sent[1]).0, 1);
        assert_eq!(result_of(&sent[3]).status, RunStatus::Success);
        let follow_up_refused = result_of(&sent[4]);
        assert_eq!(follow_up_refused.session_id.as_deref(), Some("fresh"));
        for refused in [start_refused, follow_up_refused] {
            let error = refused.error.as_deref().unwrap_or_default();
            assert_eq!(refused.error_kind, Some(ErrorKind::Permanent));
            assert!(error.contains("talon image build"), "{error}");
            // The parser said "missing field": that must not reach the host.
            assert!(
                !error.contains("session") && !error.contains("missing"),
                "{error}"
            );
        }
        assert_eq!(diag.matches("does not parse").count(), 5, "{diag}");
    }

    /// Output that notes when each line was written.
    #[derive(Default)]
    struct Timed(Vec<(Instant, Vec<u8>)>);

    impl Write for Timed {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.push((Instant::now(), bytes.to_vec()));
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn run_writes_progress_while_a_tool_runs_not_after_it() {
        let dir = TempDir::new();
        let limits = Limits {
            progress_every: Duration::from_millis(50),
            ..Limits::default()
        };
        let mut r = tool_runner(&dir, limits);
        let bash = tool_use("t1", "bash", serde_json::json!({"command": "sleep 1"}));
        let input = format!(
            "{}{}{}{}",
            line(&HostToRunner::Start(start("wait"))),
            line(&response(
                1,
                reply_with("msg_1", vec![text("Waiting."), bash])
            )),
            line(&response(2, ok("msg_2", "Done."))),
            line(&HostToRunner::Close),
        );
        let (mut out, mut diag) = (Timed::default(), Vec::new());
        assert_eq!(run(&mut r, &mut input.as_bytes(), &mut out, &mut diag), 0);
        let sent: Vec<(Instant, RunnerToHost)> = out
            .0
            .iter()
            .map(|(at, bytes)| (*at, serde_json::from_slice(bytes).unwrap()))
            .collect();
        assert_eq!(request_of(&sent[0].1).0, 1);
        // The model's text goes out before the tool starts.
        assert_eq!(
            sent[1].1,
            RunnerToHost::Output {
                text: "Waiting.".into()
            }
        );
        let next = sent
            .iter()
            .position(|(_, m)| matches!(m, RunnerToHost::ModelRequest { request_id: 2, .. }))
            .unwrap();
        let progress = &sent[2..next];
        assert!(progress.len() >= 2, "{sent:?}");
        for (_, message) in progress {
            assert!(
                matches!(message, RunnerToHost::Progress { note } if note.starts_with("running bash (")),
                "{message:?}"
            );
        }
        // Written while the command slept, well before its result went out.
        assert!(sent[next].0 - progress[0].0 >= Duration::from_millis(500));
        assert_eq!(
            result_of(&sent[sent.len() - 1].1).status,
            RunStatus::Success
        );
    }
}
