//! A client of talon's local socket channel, for tests: connect (waiting
//! for a starting host), send message lines, read talon's lines.
//!
//! Like a well-behaved client it acknowledges every `reply` line it reads
//! (`{"type":"ack","outbox_id":N}`, repeats too) and dedupes them by
//! `outbox_id`, remembering the ids across reconnects ([`SocketClient::reconnect`]).
//! A test that wants a reply left unacknowledged turns that off with
//! [`SocketClient::set_auto_ack`] and acks by hand ([`SocketClient::ack`]).
//!
//! Included with `#[path]` by the tests that use it, so it depends only on
//! tokio, serde_json and std.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// What reading one line gave.
#[derive(Debug)]
pub enum Read {
    /// A line, other than a reply already seen.
    Line(Value),
    /// A reply whose `outbox_id` this client (or one it reconnected from)
    /// has seen before: talon delivers at least once.
    Repeat(Value),
    /// Nothing within the time limit.
    Nothing,
    /// The host closed the connection (or died).
    Closed,
}

/// What a client keeps across connections.
#[derive(Debug, Clone)]
pub struct Memory {
    /// Outbox ids of the replies seen.
    pub seen: HashSet<i64>,
    /// Whether reply lines are acknowledged as they are read.
    pub auto_ack: bool,
}

impl Default for Memory {
    fn default() -> Memory {
        Memory {
            seen: HashSet::new(),
            auto_ack: true,
        }
    }
}

pub struct SocketClient {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    memory: Memory,
}

/// Connects, retrying while the host is still starting; `None` after `limit`.
pub async fn try_connect(path: &Path, limit: Duration) -> Option<SocketClient> {
    try_connect_with(path, limit, Memory::default()).await
}

/// [`try_connect`] for a client that remembers `memory` from earlier
/// connections.
pub async fn try_connect_with(
    path: &Path,
    limit: Duration,
    memory: Memory,
) -> Option<SocketClient> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(stream) = UnixStream::connect(path).await {
            let (reader, writer) = stream.into_split();
            return Some(SocketClient {
                lines: BufReader::new(reader).lines(),
                writer,
                memory,
            });
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn connect(path: &Path, limit: Duration) -> SocketClient {
    try_connect(path, limit)
        .await
        .unwrap_or_else(|| panic!("{} did not accept within {limit:?}", path.display()))
}

pub fn ack_line(outbox_id: i64) -> String {
    let mut line = json!({"type": "ack", "outbox_id": outbox_id}).to_string();
    line.push('\n');
    line
}

pub fn message_line(chat: &str, id: &str, text: &str) -> String {
    let mut line =
        json!({"type": "message", "chat": chat, "id": id, "sender": "tester", "text": text})
            .to_string();
    line.push('\n');
    line
}

impl SocketClient {
    /// Sends raw bytes; `false` if the host is gone.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).await.is_ok() && self.writer.flush().await.is_ok()
    }

    pub async fn send(&mut self, chat: &str, id: &str, text: &str) -> bool {
        self.send_raw(message_line(chat, id, text).as_bytes()).await
    }

    /// Acknowledges the reply `outbox_id`; `false` if the host is gone.
    pub async fn ack(&mut self, outbox_id: i64) -> bool {
        self.send_raw(ack_line(outbox_id).as_bytes()).await
    }

    /// Whether replies are acknowledged as they are read (the default).
    pub fn set_auto_ack(&mut self, on: bool) {
        self.memory.auto_ack = on;
    }

    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Closes this connection (whatever is unread or unacknowledged stays
    /// so) and connects again, remembering what was seen.
    pub async fn reconnect(self, path: &Path, limit: Duration) -> SocketClient {
        let memory = self.into_memory();
        try_connect_with(path, limit, memory)
            .await
            .unwrap_or_else(|| panic!("{} did not accept within {limit:?}", path.display()))
    }

    /// Closes the connection, keeping what it remembers.
    pub fn into_memory(self) -> Memory {
        self.memory
    }

    /// The next line within `limit`. A reply is acknowledged (with
    /// auto-ack on) and told apart by whether its `outbox_id` was seen.
    pub async fn read(&mut self, limit: Duration) -> Read {
        let line = match tokio::time::timeout(limit, self.lines.next_line()).await {
            Err(_) => return Read::Nothing,
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None) | Err(_)) => return Read::Closed,
        };
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("talon sent a line that is not JSON ({e}): {line}"));
        if value["type"] != "reply" {
            return Read::Line(value);
        }
        let id = value["outbox_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("a reply without an outbox id: {value}"));
        if self.memory.auto_ack {
            // A host that is gone meanwhile resends the reply to the next
            // connection, which acks it then.
            let _ = self.ack(id).await;
        }
        if self.memory.seen.insert(id) {
            Read::Line(value)
        } else {
            Read::Repeat(value)
        }
    }

    /// The next line, which must come within `limit` and must not be a
    /// repeated reply.
    pub async fn expect_line(&mut self, limit: Duration) -> Value {
        match self.read(limit).await {
            Read::Line(value) => value,
            other => panic!("expected a line from talon within {limit:?}, got {other:?}"),
        }
    }

    /// Lines until one of type `kind` (returned with those before it);
    /// repeated replies are skipped, as a deduping client would.
    pub async fn until(&mut self, kind: &str, limit: Duration) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + limit;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.read(left).await {
                Read::Line(line) => line,
                Read::Repeat(_) => continue,
                other => {
                    panic!("no {kind:?} line within {limit:?} ({other:?}); before: {before:?}")
                }
            };
            if line["type"] == kind {
                return (line, before);
            }
            before.push(line);
        }
    }
}
