//! The session transcript: the conversation of a group, kept as JSONL in the
//! group's session dir (`/workspace/session/<session_id>.jsonl`).
//!
//! Every line is one [`Entry`] with its own uuid and its parent's uuid, so the
//! file is a tree, not a list: a run whose result the host never recorded
//! (a crash, a timeout, a helper writing to the same file) leaves a branch
//! behind. A resume is therefore anchored at the last assistant uuid the host
//! recorded and walks parent links back from there, never trusting whatever
//! the file's last line happens to be (seed known issue 1).
//!
//! Writes are append-only, one flushed line per message, so a crash loses at
//! most the line being written; a torn or corrupted line is skipped on read.
//! A transcript over its budget is compacted into a summary plus the latest
//! messages, and the full file is archived first.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::wire::{ChatMessage, ContentBlock, Role};

/// Longest session id accepted; ids become file names.
const MAX_SESSION_ID_LEN: usize = 128;

/// One line of the transcript file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Entry {
    pub uuid: String,
    pub parent_uuid: Option<String>,
    pub message: ChatMessage,
    pub timestamp_ms: u64,
    /// Set on the summary that opens a compacted transcript.
    #[serde(default)]
    pub summary: bool,
}

/// Why a transcript cannot be resumed.
#[derive(Debug)]
pub enum SessionError {
    /// The anchor the host recorded is not in the file: the host should start
    /// a fresh session rather than continue on a guessed position.
    UnknownAnchor(String),
    Io(io::Error),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The wording matters: the host recognises a stale session by
        // "session" together with "unknown"/"missing" and then starts fresh.
        match self {
            SessionError::UnknownAnchor(anchor) => write!(
                f,
                "session transcript missing or unknown anchor {anchor}: \
                 the recorded resume point is not in the transcript"
            ),
            SessionError::Io(error) => write!(f, "session transcript I/O error: {error}"),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::UnknownAnchor(_) => None,
            SessionError::Io(error) => Some(error),
        }
    }
}

impl From<io::Error> for SessionError {
    fn from(error: io::Error) -> Self {
        SessionError::Io(error)
    }
}

/// A session's transcript file and the position the conversation is at.
#[derive(Debug)]
pub struct Transcript {
    path: PathBuf,
    session_id: String,
    /// Every parsed entry, in file order (all branches).
    entries: Vec<Entry>,
    /// uuid -> index into `entries`.
    by_uuid: HashMap<String, usize>,
    /// The entry new messages are parented on.
    tip: Option<String>,
    /// The file's last line has no newline (a write torn by a crash): the next
    /// append must start a fresh line or it would corrupt its own line too.
    torn_tail: bool,
}

impl Transcript {
    /// `<dir>/<session_id>.jsonl`. Missing file -> empty transcript. Lines
    /// that do not parse are skipped (reported to stderr), never fatal.
    pub fn open(dir: &Path, session_id: &str) -> io::Result<Transcript> {
        validate_session_id(session_id)?;
        let path = dir.join(format!("{session_id}.jsonl"));
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        let torn_tail = bytes.last().is_some_and(|&last| last != b'\n');
        let mut transcript = Transcript {
            path,
            session_id: session_id.to_string(),
            entries: Vec::new(),
            by_uuid: HashMap::new(),
            tip: None,
            torn_tail,
        };
        // Bytes, not a string: one line of invalid UTF-8 must not cost the rest.
        for (number, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Entry>(line) {
                Ok(entry) => transcript.push(entry),
                Err(error) => eprintln!(
                    "session {session_id}: skipping unreadable transcript line {}: {error}",
                    number + 1
                ),
            }
        }
        transcript.tip = transcript.entries.last().map(|e| e.uuid.clone());
        Ok(transcript)
    }

    /// The conversation to send to the model when resuming at `anchor` (the
    /// last assistant entry uuid the host recorded): parent links are walked
    /// from the anchor back to the root, so entries on other branches are
    /// ignored. `None` resumes at the file's tip (first run of a session). An
    /// anchor not in the file is [`SessionError::UnknownAnchor`].
    pub fn resume(&mut self, anchor: Option<&str>) -> Result<Vec<ChatMessage>, SessionError> {
        if let Some(anchor) = anchor {
            if !self.by_uuid.contains_key(anchor) {
                return Err(SessionError::UnknownAnchor(anchor.to_string()));
            }
            self.tip = Some(anchor.to_string());
        } else {
            self.tip = self.entries.last().map(|e| e.uuid.clone());
        }
        Ok(self
            .branch()
            .into_iter()
            .map(|entry| entry.message.clone())
            .collect())
    }

    /// Appends `message` as a child of the current position and makes it the
    /// new position; returns its uuid. One line is written and flushed in
    /// append mode, so a crash loses at most that line.
    pub fn append(&mut self, message: ChatMessage) -> io::Result<String> {
        let entry = Entry {
            uuid: new_uuid(),
            parent_uuid: self.tip.clone(),
            message,
            timestamp_ms: now_ms(),
            summary: false,
        };
        let mut line = Vec::new();
        if self.torn_tail {
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, &entry)?;
        line.push(b'\n');
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        // One write call per line keeps concurrent appenders from interleaving.
        file.write_all(&line)?;
        file.flush()?;
        self.torn_tail = false;
        let uuid = entry.uuid.clone();
        self.push(entry);
        self.tip = Some(uuid.clone());
        Ok(uuid)
    }

    /// Rough size in tokens (chars / 4) of the conversation at the current
    /// position: enough to decide when to compact, no tokenizer needed.
    pub fn approx_tokens(&self) -> usize {
        let chars: usize = self
            .branch()
            .iter()
            .flat_map(|entry| entry.message.content.iter())
            .map(block_chars)
            .sum();
        chars / 4
    }

    /// Archives the full file to `<archive_dir>/<session_id>-<timestamp_ms>.jsonl`
    /// and rewrites the transcript (same session id) as a user message holding
    /// `summary` (marked `summary`) followed by the last `keep_last` messages of
    /// the current branch (an earlier summary among them is dropped: the new
    /// one supersedes it), re-parented into one chain. Kept entries keep their
    /// uuids, so an anchor the host recorded inside the kept tail stays valid.
    /// Returns the new tip uuid.
    pub fn compact(
        &mut self,
        summary: &str,
        keep_last: usize,
        archive_dir: &Path,
    ) -> io::Result<String> {
        let branch: Vec<Entry> = self.branch().into_iter().cloned().collect();
        let mut start = branch.len().saturating_sub(keep_last);
        // A tool result without the assistant message that called the tool is
        // rejected by the provider, so keep that call too.
        while start > 0 && start < branch.len() && has_tool_result(&branch[start].message) {
            start -= 1;
        }

        self.archive(archive_dir)?;

        let head = Entry {
            uuid: new_uuid(),
            parent_uuid: None,
            message: ChatMessage {
                role: Role::User,
                content: vec![ContentBlock::Text {
                    text: summary.to_string(),
                }],
            },
            timestamp_ms: now_ms(),
            summary: true,
        };
        let mut compacted = vec![head];
        // An earlier summary is superseded by the new one, not kept beside it.
        for entry in branch[start..].iter().filter(|e| !e.summary) {
            let parent = compacted.last().map(|e| e.uuid.clone());
            compacted.push(Entry {
                parent_uuid: parent,
                ..entry.clone()
            });
        }

        let mut contents = Vec::new();
        for entry in &compacted {
            serde_json::to_writer(&mut contents, entry)?;
            contents.push(b'\n');
        }
        // Write aside and rename over, so a crash leaves either the old file
        // (already archived) or the new one, never half of one.
        let temp = self.path.with_extension("jsonl.compacting");
        {
            let mut file = fs::File::create(&temp)?;
            file.write_all(&contents)?;
            file.sync_all()?;
        }
        fs::rename(&temp, &self.path)?;

        self.entries.clear();
        self.by_uuid.clear();
        self.torn_tail = false;
        for entry in compacted {
            self.push(entry);
        }
        let tip = self
            .entries
            .last()
            .map(|e| e.uuid.clone())
            .unwrap_or_default();
        self.tip = Some(tip.clone());
        Ok(tip)
    }

    /// The uuid of the current position (last appended / resumed-at entry).
    pub fn tip(&self) -> Option<&str> {
        self.tip.as_deref()
    }

    fn push(&mut self, entry: Entry) {
        self.by_uuid.insert(entry.uuid.clone(), self.entries.len());
        self.entries.push(entry);
    }

    /// The entries from the root to the current position, following parent
    /// links. A missing parent or a loop (a damaged file) ends the walk there.
    fn branch(&self) -> Vec<&Entry> {
        let mut chain = Vec::new();
        let mut seen = HashSet::new();
        let mut next = self.tip.as_deref();
        while let Some(uuid) = next {
            if !seen.insert(uuid) {
                eprintln!("session {}: parent loop at {uuid}", self.session_id);
                break;
            }
            let Some(&index) = self.by_uuid.get(uuid) else {
                eprintln!(
                    "session {}: parent {uuid} missing, history starts after it",
                    self.session_id
                );
                break;
            };
            let entry = &self.entries[index];
            chain.push(entry);
            next = entry.parent_uuid.as_deref();
        }
        chain.reverse();
        chain
    }

    /// Copies the file as it is (every branch, even unreadable lines) to a
    /// name no earlier archive uses.
    fn archive(&self, archive_dir: &Path) -> io::Result<PathBuf> {
        fs::create_dir_all(archive_dir)?;
        let original = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        let mut stamp = now_ms();
        loop {
            let target = archive_dir.join(format!("{}-{stamp}.jsonl", self.session_id));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)
            {
                Ok(mut file) => {
                    file.write_all(&original)?;
                    file.sync_all()?;
                    return Ok(target);
                }
                // Two compactions in one millisecond: take the next stamp.
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => stamp += 1,
                Err(error) => return Err(error),
            }
        }
    }
}

/// Session ids become file names, so only a plain name is accepted.
fn validate_session_id(session_id: &str) -> io::Result<()> {
    let plain = !session_id.is_empty()
        && session_id.len() <= MAX_SESSION_ID_LEN
        && !session_id.starts_with('.')
        && session_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid session id {session_id:?}"),
        ))
    }
}

fn has_tool_result(message: &ChatMessage) -> bool {
    message
        .content
        .iter()
        .any(|block| matches!(block, ContentBlock::ToolResult { .. }))
}

fn block_chars(block: &ContentBlock) -> usize {
    match block {
        ContentBlock::Text { text } => text.chars().count(),
        ContentBlock::ToolUse { id, name, input } => {
            id.chars().count() + name.chars().count() + input.to_string().chars().count()
        }
        ContentBlock::ToolResult {
            tool_use_id,
            content,
            ..
        } => tool_use_id.chars().count() + content.chars().count(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// 32 hex chars: 16 bytes from /dev/urandom, or (without it) the time, the
/// process id and a counter, which is still unique within this transcript.
fn new_uuid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    let random = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_ok() {
        return bytes.iter().map(|b| format!("{b:02x}")).collect();
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    // 16 hex of time, 8 of pid, 8 of counter.
    format!(
        "{:016x}{:08x}{:08x}",
        nanos as u64,
        std::process::id(),
        count as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("talon-session-{name}-{}", new_uuid()));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn text(role: Role, text: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: vec![ContentBlock::Text { text: text.into() }],
        }
    }

    fn texts(messages: &[ChatMessage]) -> Vec<String> {
        messages
            .iter()
            .map(|m| match &m.content[0] {
                ContentBlock::Text { text } => text.clone(),
                ContentBlock::ToolUse { name, .. } => format!("use:{name}"),
                ContentBlock::ToolResult { content, .. } => format!("result:{content}"),
            })
            .collect()
    }

    fn read_entries(path: &Path) -> Vec<Entry> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn appended_messages_survive_a_reopen() {
        let dir = TempDir::new("roundtrip");
        let mut t = Transcript::open(&dir.0, "s1").unwrap();
        assert_eq!(t.tip(), None);
        assert!(t.resume(None).unwrap().is_empty());
        let first = t.append(text(Role::User, "hello")).unwrap();
        let second = t.append(text(Role::Assistant, "hi there")).unwrap();
        assert_eq!(first.len(), 32);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(first, second);
        assert_eq!(t.tip(), Some(second.as_str()));

        let entries = read_entries(&dir.0.join("s1.jsonl"));
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].parent_uuid, None);
        assert_eq!(entries[1].parent_uuid.as_deref(), Some(first.as_str()));
        assert!(!entries[1].summary);

        let mut again = Transcript::open(&dir.0, "s1").unwrap();
        assert_eq!(again.tip(), Some(second.as_str()));
        let messages = again.resume(Some(&second)).unwrap();
        assert_eq!(
            messages,
            vec![text(Role::User, "hello"), text(Role::Assistant, "hi there")]
        );
    }

    #[test]
    fn resume_at_anchor_ignores_a_stale_branch_written_after_it() {
        let dir = TempDir::new("anchor");
        let mut t = Transcript::open(&dir.0, "s").unwrap();
        t.append(text(Role::User, "q1")).unwrap();
        let anchor = t.append(text(Role::Assistant, "a1")).unwrap();
        // A run the host never got a result for kept writing.
        t.append(text(Role::User, "stale q")).unwrap();
        let stale_tip = t.append(text(Role::Assistant, "stale a")).unwrap();

        let mut t = Transcript::open(&dir.0, "s").unwrap();
        assert_eq!(t.tip(), Some(stale_tip.as_str()));
        let messages = t.resume(Some(&anchor)).unwrap();
        assert_eq!(texts(&messages), ["q1", "a1"]);
        assert_eq!(t.tip(), Some(anchor.as_str()));

        let next = t.append(text(Role::User, "q2")).unwrap();
        let entries = read_entries(&dir.0.join("s.jsonl"));
        let written = entries.iter().find(|e| e.uuid == next).unwrap();
        assert_eq!(written.parent_uuid.as_deref(), Some(anchor.as_str()));
        assert_eq!(texts(&t.resume(Some(&next)).unwrap()), ["q1", "a1", "q2"]);
        // The stale branch is still there, intact, for whoever inspects it.
        assert_eq!(
            texts(&t.resume(Some(&stale_tip)).unwrap()),
            ["q1", "a1", "stale q", "stale a"]
        );
    }

    #[test]
    fn no_anchor_resumes_at_the_tip() {
        let dir = TempDir::new("tip");
        let mut t = Transcript::open(&dir.0, "s").unwrap();
        let root = t.append(text(Role::User, "q1")).unwrap();
        t.append(text(Role::Assistant, "a1")).unwrap();
        t.resume(Some(&root)).unwrap();
        let branch_tip = t.append(text(Role::Assistant, "other a1")).unwrap();

        let mut t = Transcript::open(&dir.0, "s").unwrap();
        let messages = t.resume(None).unwrap();
        assert_eq!(texts(&messages), ["q1", "other a1"]);
        assert_eq!(t.tip(), Some(branch_tip.as_str()));
    }

    #[test]
    fn unknown_anchor_is_an_error_the_host_treats_as_stale() {
        let dir = TempDir::new("unknown");
        let mut t = Transcript::open(&dir.0, "s").unwrap();
        let kept = t.append(text(Role::User, "q1")).unwrap();
        let error = t.resume(Some("deadbeef")).unwrap_err();
        assert!(matches!(&error, SessionError::UnknownAnchor(a) if a == "deadbeef"));
        let message = error.to_string().to_ascii_lowercase();
        assert!(message.contains("session"));
        assert!(message.contains("unknown") || message.contains("missing"));
        assert!(message.contains("deadbeef"));
        // The failed resume did not move the position.
        assert_eq!(t.tip(), Some(kept.as_str()));

        // A session whose file is gone: same answer.
        let mut gone = Transcript::open(&dir.0, "never-written").unwrap();
        assert!(matches!(
            gone.resume(Some(&kept)),
            Err(SessionError::UnknownAnchor(_))
        ));
    }

    #[test]
    fn corrupted_and_torn_lines_are_skipped() {
        let dir = TempDir::new("corrupt");
        let mut t = Transcript::open(&dir.0, "s").unwrap();
        let q = t.append(text(Role::User, "q1")).unwrap();
        let a = t.append(text(Role::Assistant, "a1")).unwrap();
        let path = dir.0.join("s.jsonl");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{not json at all\n\xff\xfe binary\n\n")
            .unwrap();
        // A line torn by a crash: no newline at the end.
        file.write_all(br#"{"uuid":"torn","parent_uu"#).unwrap();
        drop(file);

        let mut t = Transcript::open(&dir.0, "s").unwrap();
        assert_eq!(t.tip(), Some(a.as_str()));
        assert_eq!(texts(&t.resume(Some(&a)).unwrap()), ["q1", "a1"]);
        // The next append starts its own line instead of gluing onto the torn one.
        let next = t.append(text(Role::User, "q2")).unwrap();
        let mut reopened = Transcript::open(&dir.0, "s").unwrap();
        assert_eq!(reopened.tip(), Some(next.as_str()));
        assert_eq!(
            texts(&reopened.resume(Some(&next)).unwrap()),
            ["q1", "a1", "q2"]
        );
        assert_ne!(q, next);
    }

    #[test]
    fn compaction_archives_the_file_and_keeps_summary_then_tail() {
        let dir = TempDir::new("compact");
        let archive = dir.0.join("conversations");
        let mut t = Transcript::open(&dir.0, "s").unwrap();
        let mut ids = Vec::new();
        for i in 0..3 {
            let padding = "-".repeat(100);
            ids.push(
                t.append(text(Role::User, &format!("q{i}{padding}")))
                    .unwrap(),
            );
            ids.push(
                t.append(text(Role::Assistant, &format!("a{i}{padding}")))
                    .unwrap(),
            );
        }
        // A stale branch, which the archive must keep and the new file must not.
        t.resume(Some(&ids[1])).unwrap();
        t.append(text(Role::User, "stale")).unwrap();
        t.resume(Some(&ids[5])).unwrap();
        let path = dir.0.join("s.jsonl");
        let before = fs::read(&path).unwrap();
        let tokens_before = t.approx_tokens();

        let tip = t.compact("the story so far", 2, &archive).unwrap();

        let archived: Vec<_> = fs::read_dir(&archive)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(archived.len(), 1);
        let name = archived[0].file_name().into_string().unwrap();
        assert!(name.starts_with("s-") && name.ends_with(".jsonl"), "{name}");
        assert_eq!(fs::read(archived[0].path()).unwrap(), before);

        let entries = read_entries(&path);
        assert_eq!(entries.len(), 3);
        assert!(entries[0].summary);
        assert_eq!(entries[0].parent_uuid, None);
        assert_eq!(entries[0].message, text(Role::User, "the story so far"));
        assert_eq!(entries[1].uuid, ids[4]);
        assert_eq!(entries[2].uuid, ids[5]);
        assert!(!entries[1].summary && !entries[2].summary);
        assert_eq!(
            entries[1].parent_uuid.as_deref(),
            Some(entries[0].uuid.as_str())
        );
        assert_eq!(
            entries[2].parent_uuid.as_deref(),
            Some(entries[1].uuid.as_str())
        );
        assert_eq!(tip, ids[5]);
        assert_eq!(t.tip(), Some(tip.as_str()));
        assert!(t.approx_tokens() < tokens_before);

        // The host's anchor (the last assistant uuid) still resumes, from disk.
        let mut reopened = Transcript::open(&dir.0, "s").unwrap();
        assert_eq!(
            texts(&reopened.resume(Some(&ids[5])).unwrap()),
            [
                "the story so far",
                &format!("q2{}", "-".repeat(100)),
                &format!("a2{}", "-".repeat(100))
            ]
        );
        // An anchor that was compacted away is unknown now.
        assert!(matches!(
            reopened.resume(Some(&ids[1])),
            Err(SessionError::UnknownAnchor(_))
        ));
        // Appending continues the compacted chain.
        let next = t.append(text(Role::User, "q3")).unwrap();
        let last = read_entries(&path).pop().unwrap();
        assert_eq!(last.uuid, next);
        assert_eq!(last.parent_uuid.as_deref(), Some(ids[5].as_str()));
    }

    #[test]
    fn compaction_never_keeps_a_tool_result_without_its_call() {
        let dir = TempDir::new("compact-tools");
        let mut t = Transcript::open(&dir.0, "s").unwrap();
        t.append(text(Role::User, "list files")).unwrap();
        t.append(ChatMessage {
            role: Role::Assistant,
            content: vec![ContentBlock::ToolUse {
                id: "toolu_1".into(),
                name: "bash".into(),
                input: serde_json::json!({"command": "ls"}),
            }],
        })
        .unwrap();
        t.append(ChatMessage {
            role: Role::User,
            content: vec![ContentBlock::ToolResult {
                tool_use_id: "toolu_1".into(),
                content: "a.txt".into(),
                is_error: false,
            }],
        })
        .unwrap();
        t.append(text(Role::Assistant, "one file")).unwrap();

        t.compact("summary", 2, &dir.0.join("archive")).unwrap();
        let mut reopened = Transcript::open(&dir.0, "s").unwrap();
        assert_eq!(
            texts(&reopened.resume(None).unwrap()),
            ["summary", "use:bash", "result:a.txt", "one file"]
        );
    }

    #[test]
    fn repeated_compactions_get_distinct_archives_and_one_summary() {
        let dir = TempDir::new("compact-twice");
        let archive = dir.0.join("archive");
        let mut t = Transcript::open(&dir.0, "s").unwrap();
        t.append(text(Role::User, "q")).unwrap();
        t.append(text(Role::Assistant, "a")).unwrap();
        t.compact("one", 1, &archive).unwrap();
        t.compact("two", 2, &archive).unwrap();
        assert_eq!(fs::read_dir(&archive).unwrap().count(), 2);
        let mut reopened = Transcript::open(&dir.0, "s").unwrap();
        // The first summary is superseded, not kept as a second one.
        assert_eq!(texts(&reopened.resume(None).unwrap()), ["two", "a"]);
        t.compact("three", 0, &archive).unwrap();
        let mut reopened = Transcript::open(&dir.0, "s").unwrap();
        assert_eq!(texts(&reopened.resume(None).unwrap()), ["three"]);
        assert_eq!(fs::read_dir(&archive).unwrap().count(), 3);
    }

    #[test]
    fn approx_tokens_grows_with_the_current_branch() {
        let dir = TempDir::new("tokens");
        let mut t = Transcript::open(&dir.0, "s").unwrap();
        assert_eq!(t.approx_tokens(), 0);
        let anchor = t.append(text(Role::User, &"x".repeat(400))).unwrap();
        assert_eq!(t.approx_tokens(), 100);
        t.append(text(Role::Assistant, &"y".repeat(800))).unwrap();
        assert_eq!(t.approx_tokens(), 300);
        // Only the current branch counts.
        t.resume(Some(&anchor)).unwrap();
        assert_eq!(t.approx_tokens(), 100);
    }

    #[test]
    fn session_ids_that_are_not_plain_names_are_refused() {
        let dir = TempDir::new("ids");
        for bad in ["", "../escape", "a/b", ".hidden", "x:y"] {
            let error = Transcript::open(&dir.0, bad).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(Transcript::open(&dir.0, "0b1e2f-Sess_1.a").is_ok());
    }
}
