//! A client of talon's local socket channel, for tests: connect (waiting
//! for a starting host), send message lines, read talon's lines.
//!
//! Included with `#[path]` by the tests that use it, so it depends only on
//! tokio, serde_json and std.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// What reading one line gave.
#[derive(Debug)]
pub enum Read {
    Line(Value),
    /// Nothing within the time limit.
    Nothing,
    /// The host closed the connection (or died).
    Closed,
}

pub struct SocketClient {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

/// Connects, retrying while the host is still starting; `None` after `limit`.
pub async fn try_connect(path: &Path, limit: Duration) -> Option<SocketClient> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(stream) = UnixStream::connect(path).await {
            let (reader, writer) = stream.into_split();
            return Some(SocketClient {
                lines: BufReader::new(reader).lines(),
                writer,
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

    pub async fn read(&mut self, limit: Duration) -> Read {
        match tokio::time::timeout(limit, self.lines.next_line()).await {
            Err(_) => Read::Nothing,
            Ok(Ok(Some(line))) => Read::Line(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("talon sent a line that is not JSON ({e}): {line}")),
            ),
            Ok(Ok(None) | Err(_)) => Read::Closed,
        }
    }

    /// The next line, which must come within `limit`.
    pub async fn expect_line(&mut self, limit: Duration) -> Value {
        match self.read(limit).await {
            Read::Line(value) => value,
            other => panic!("expected a line from talon within {limit:?}, got {other:?}"),
        }
    }

    /// Lines until one of type `kind` (returned with those before it).
    pub async fn until(&mut self, kind: &str, limit: Duration) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + limit;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.read(left).await {
                Read::Line(line) => line,
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

    /// Splits into the reading and the writing half.
    pub fn into_parts(self) -> (tokio::io::Lines<BufReader<OwnedReadHalf>>, OwnedWriteHalf) {
        (self.lines, self.writer)
    }
}
