//! The SQLite store: one file under `data/`, versioned migrations.
//!
//! Everything that must survive a crash lives here: messages (deduplicated by
//! platform message id), registered groups, agent sessions, per-chat cursors,
//! the outbox of replies, failed batches and scheduled tasks.
//!
//! Cursors count in the store's insertion order (`messages.seq`), not in
//! platform timestamps, which can collide or arrive out of order. A reply and
//! the cursor advance it completes are written in one transaction (the
//! outbox), so a crash can never leave a batch answered-but-unrecorded or
//! recorded-but-unanswered.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row};
use rusqlite_migration::{Migrations, M};

use crate::container_config::GroupContainerConfig;
use crate::messages::{InboundMessage, RegisteredGroup, StoredMessage, UnixMillis};

/// Schema history. Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE chats (
    chat_id         TEXT PRIMARY KEY,
    name            TEXT NOT NULL DEFAULT '',
    channel         TEXT NOT NULL,
    last_message_at INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id         TEXT NOT NULL,
    platform_msg_id TEXT NOT NULL,
    sender_id       TEXT NOT NULL,
    sender_name     TEXT NOT NULL,
    content         TEXT NOT NULL,
    timestamp       INTEGER NOT NULL,
    is_from_me      INTEGER NOT NULL DEFAULT 0,
    is_bot_message  INTEGER NOT NULL DEFAULT 0,
    reply_to        TEXT,
    thread_id       TEXT,
    UNIQUE (chat_id, platform_msg_id)
);
CREATE INDEX messages_by_chat ON messages (chat_id, seq);
CREATE TABLE registered_groups (
    chat_id          TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    folder           TEXT NOT NULL UNIQUE,
    trigger_pattern  TEXT,
    requires_trigger INTEGER NOT NULL DEFAULT 1,
    is_main          INTEGER NOT NULL DEFAULT 0,
    container_config TEXT,
    added_at         INTEGER NOT NULL
);
CREATE TABLE sessions (
    group_folder      TEXT PRIMARY KEY,
    session_id        TEXT NOT NULL,
    last_assistant_id TEXT,
    updated_at        INTEGER NOT NULL
);
CREATE TABLE router_state (
    chat_id        TEXT PRIMARY KEY,
    last_agent_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id      TEXT NOT NULL,
    group_folder TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('reply', 'notice')),
    text         TEXT NOT NULL,
    thread_id    TEXT,
    through_seq  INTEGER,
    created_at   INTEGER NOT NULL,
    sent_at      INTEGER
);
CREATE INDEX outbox_unsent ON outbox (sent_at) WHERE sent_at IS NULL;
CREATE TABLE failed_batches (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id      TEXT NOT NULL,
    group_folder TEXT NOT NULL,
    from_seq     INTEGER NOT NULL,
    through_seq  INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    failed_at    INTEGER NOT NULL
);
CREATE TABLE scheduled_tasks (
    id             TEXT PRIMARY KEY,
    group_folder   TEXT NOT NULL,
    chat_id        TEXT NOT NULL,
    prompt         TEXT NOT NULL,
    schedule_type  TEXT NOT NULL CHECK (schedule_type IN ('cron', 'interval', 'once')),
    schedule_value TEXT NOT NULL,
    context_mode   TEXT NOT NULL DEFAULT 'isolated' CHECK (context_mode IN ('group', 'isolated')),
    next_run       INTEGER,
    last_run       INTEGER,
    status         TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'completed')),
    created_at     INTEGER NOT NULL
);
CREATE INDEX tasks_due ON scheduled_tasks (status, next_run);
CREATE TABLE task_run_logs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     TEXT NOT NULL REFERENCES scheduled_tasks (id) ON DELETE CASCADE,
    run_at      INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    status      TEXT NOT NULL,
    result      TEXT,
    error       TEXT
);
"#];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the database {path} has schema version {found}, newer than this talon knows ({known}); \
         run the newer talon, or restore a backup"
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
    #[error("cannot migrate the database {path}: {message}")]
    Migrate { path: PathBuf, message: String },
    #[error("invalid group folder {folder:?}: {why}")]
    InvalidFolder { folder: String, why: &'static str },
    #[error("the group folder {0:?} is already used by another chat")]
    FolderTaken(String),
    /// The message is the validation error, which names the field and rule.
    #[error("{0}")]
    InvalidContainerConfig(String),
    #[error("no registered group has chat id {0:?}")]
    UnknownGroup(String),
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the database lock was poisoned by a panic")]
    Poisoned,
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Checks a group folder name: `[a-z0-9-]`, 1–64 characters, not starting
/// with `-`. (`..` and `/` are impossible under that alphabet.)
pub fn validate_folder(folder: &str) -> Result<()> {
    let invalid = |why| StoreError::InvalidFolder {
        folder: folder.to_string(),
        why,
    };
    if folder.is_empty() || folder.len() > 64 {
        return Err(invalid("it must be 1 to 64 characters long"));
    }
    if !folder
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid("only a-z, 0-9 and '-' are allowed"));
    }
    if folder.starts_with('-') {
        return Err(invalid("it must not start with '-'"));
    }
    if folder == "global" {
        return Err(invalid("'global' is the shared memory folder"));
    }
    Ok(())
}

/// A reply or notice waiting to be delivered (or already delivered).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub chat_id: String,
    pub group_folder: String,
    pub kind: OutboxKind,
    pub text: String,
    pub thread_id: Option<String>,
    pub through_seq: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// The agent's answer.
    Reply,
    /// A short line from talon itself (e.g. a batch that failed).
    Notice,
}

impl OutboxKind {
    fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Reply => "reply",
            OutboxKind::Notice => "notice",
        }
    }
}

/// A group's agent session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub session_id: String,
    pub last_assistant_id: Option<String>,
}

/// A batch that ran out of retries.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FailedBatch {
    pub chat_id: String,
    pub group_folder: String,
    pub from_seq: i64,
    pub through_seq: i64,
    pub attempts: u32,
    pub reason: String,
    pub failed_at: UnixMillis,
}

/// How a task's due times are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// A 5-field cron expression, in the configured timezone.
    Cron,
    /// Every so many milliseconds.
    Interval,
    /// Once, at an instant.
    Once,
}

impl ScheduleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleKind::Cron => "cron",
            ScheduleKind::Interval => "interval",
            ScheduleKind::Once => "once",
        }
    }

    pub fn parse(text: &str) -> Option<ScheduleKind> {
        match text {
            "cron" => Some(ScheduleKind::Cron),
            "interval" => Some(ScheduleKind::Interval),
            "once" => Some(ScheduleKind::Once),
            _ => None,
        }
    }
}

/// Which conversation a task runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextMode {
    /// The group's own agent session.
    Group,
    /// A fresh session for every run.
    Isolated,
}

impl ContextMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ContextMode::Group => "group",
            ContextMode::Isolated => "isolated",
        }
    }

    pub fn parse(text: &str) -> Option<ContextMode> {
        match text {
            "group" => Some(ContextMode::Group),
            "isolated" => Some(ContextMode::Isolated),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Active,
    Paused,
    Completed,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Active => "active",
            TaskStatus::Paused => "paused",
            TaskStatus::Completed => "completed",
        }
    }

    fn parse(text: &str) -> Option<TaskStatus> {
        match text {
            "active" => Some(TaskStatus::Active),
            "paused" => Some(TaskStatus::Paused),
            "completed" => Some(TaskStatus::Completed),
            _ => None,
        }
    }
}

/// A scheduled task as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskRow {
    pub id: String,
    /// The group whose container runs the task.
    pub group_folder: String,
    /// Where the task's output goes.
    pub chat_id: String,
    pub prompt: String,
    pub schedule_kind: ScheduleKind,
    pub schedule_value: String,
    pub context_mode: ContextMode,
    /// When it is next due (`None`: never again).
    pub next_run: Option<UnixMillis>,
    pub last_run: Option<UnixMillis>,
    pub status: TaskStatus,
    pub created_at: UnixMillis,
}

/// One run of a scheduled task, as logged.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskRunLog {
    pub task_id: String,
    pub run_at: UnixMillis,
    pub duration_ms: i64,
    /// `success` or `error`.
    pub status: String,
    pub result: Option<String>,
    pub error: Option<String>,
}

/// Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

pub fn now_millis() -> UnixMillis {
    chrono::Utc::now().timestamp_millis()
}

fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect())
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::prepare(&mut conn, path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// A private in-memory store, for tests.
    pub fn open_in_memory() -> Result<Store> {
        let mut conn = Connection::open_in_memory()?;
        Self::prepare(&mut conn, Path::new(":memory:"))?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn prepare(conn: &mut Connection, path: &Path) -> Result<()> {
        // WAL: readers never block the writer; NORMAL sync is durable across
        // process crashes (the failure talon must survive), and fast.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // 512 KiB of page cache (SQLite's default is 2 MB per connection):
        // the lookups are indexed and the kernel caches the file anyway.
        conn.pragma_update(None, "cache_size", -512)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let found: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len();
        if found > known {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found,
                known,
            });
        }
        migrations()
            .to_latest(conn)
            .map_err(|e| StoreError::Migrate {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Stores an inbound message. `None` when the platform already delivered
    /// it (same chat and platform message id): the caller must not act twice.
    pub fn insert_message(&self, msg: &InboundMessage) -> Result<Option<i64>> {
        let conn = self.conn()?;
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO chats (chat_id, channel, last_message_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (chat_id) DO UPDATE SET last_message_at = max(last_message_at, ?3)",
            params![
                msg.chat_id,
                crate::messages::channel_of(&msg.chat_id),
                msg.timestamp
            ],
        )?;
        let inserted = tx.execute(
            "INSERT INTO messages (chat_id, platform_msg_id, sender_id, sender_name, content,
                 timestamp, is_from_me, is_bot_message, reply_to, thread_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (chat_id, platform_msg_id) DO NOTHING",
            params![
                msg.chat_id,
                msg.platform_msg_id,
                msg.sender_id,
                msg.sender_name,
                msg.content,
                msg.timestamp,
                msg.is_from_me,
                msg.is_bot_message,
                msg.reply_to,
                msg.thread_id
            ],
        )?;
        let seq = (inserted == 1).then(|| tx.last_insert_rowid());
        tx.commit()?;
        Ok(seq)
    }

    /// Messages of `chat_id` after `after_seq`, oldest first, at most `limit`.
    /// The assistant's own messages are left out: they are not new input.
    pub fn messages_after(
        &self,
        chat_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT seq, chat_id, platform_msg_id, sender_id, sender_name, content, timestamp,
                    is_from_me, is_bot_message, reply_to, thread_id
             FROM messages WHERE chat_id = ?1 AND seq > ?2 AND is_from_me = 0
             ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![chat_id, after_seq, i64::try_from(limit).unwrap_or(i64::MAX)],
            stored_message,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The newest message seq in a chat (0 when empty).
    pub fn latest_seq(&self, chat_id: &str) -> Result<i64> {
        let conn = self.conn()?;
        Ok(conn.query_row(
            "SELECT coalesce(max(seq), 0) FROM messages WHERE chat_id = ?1 AND is_from_me = 0",
            [chat_id],
            |r| r.get(0),
        )?)
    }

    /// Registers (or updates) a group after validating its folder and its
    /// container config.
    pub fn register_group(&self, group: &RegisteredGroup) -> Result<()> {
        validate_folder(&group.folder)?;
        GroupContainerConfig::of_group(group.container_config.as_deref())
            .map_err(|e| StoreError::InvalidContainerConfig(e.to_string()))?;
        let conn = self.conn()?;
        let taken: Option<String> = conn
            .query_row(
                "SELECT chat_id FROM registered_groups WHERE folder = ?1",
                [&group.folder],
                |r| r.get(0),
            )
            .optional()?;
        if taken.is_some_and(|chat| chat != group.chat_id) {
            return Err(StoreError::FolderTaken(group.folder.clone()));
        }
        conn.execute(
            "INSERT INTO registered_groups (chat_id, name, folder, trigger_pattern,
                 requires_trigger, is_main, container_config, added_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (chat_id) DO UPDATE SET name = ?2, folder = ?3, trigger_pattern = ?4,
                 requires_trigger = ?5, is_main = ?6,
                 container_config = coalesce(?7, container_config)",
            params![
                group.chat_id,
                group.name,
                group.folder,
                group.trigger_pattern,
                group.requires_trigger,
                group.is_main,
                group.container_config,
                group.added_at
            ],
        )?;
        Ok(())
    }

    /// Replaces a group's container config (`None`: back to the defaults).
    /// The config is validated first: one built in code skips `parse`.
    pub fn set_container_config(
        &self,
        chat_id: &str,
        config: Option<&GroupContainerConfig>,
    ) -> Result<()> {
        let text = match config {
            Some(config) => {
                config
                    .validate()
                    .map_err(|e| StoreError::InvalidContainerConfig(e.to_string()))?;
                Some(config.to_json())
            }
            None => None,
        };
        let conn = self.conn()?;
        let updated = conn.execute(
            "UPDATE registered_groups SET container_config = ?2 WHERE chat_id = ?1",
            params![chat_id, text],
        )?;
        if updated == 0 {
            return Err(StoreError::UnknownGroup(chat_id.to_string()));
        }
        Ok(())
    }

    pub fn groups(&self) -> Result<Vec<RegisteredGroup>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT chat_id, name, folder, trigger_pattern, requires_trigger, is_main,
                    container_config, added_at
             FROM registered_groups ORDER BY added_at, folder",
        )?;
        let rows = stmt.query_map([], registered_group)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn group_by_chat(&self, chat_id: &str) -> Result<Option<RegisteredGroup>> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT chat_id, name, folder, trigger_pattern, requires_trigger, is_main,
                        container_config, added_at
                 FROM registered_groups WHERE chat_id = ?1",
                [chat_id],
                registered_group,
            )
            .optional()?)
    }

    /// The last message seq the agent has answered in `chat_id` (0: none).
    pub fn cursor(&self, chat_id: &str) -> Result<i64> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT last_agent_seq FROM router_state WHERE chat_id = ?1",
                [chat_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// Records the agent's output for a batch: the outbox row and the cursor
    /// advance (to `through_seq`, never backwards) commit together.
    pub fn record_reply(
        &self,
        chat_id: &str,
        group_folder: &str,
        text: &str,
        thread_id: Option<&str>,
        through_seq: i64,
    ) -> Result<OutboxRow> {
        let conn = self.conn()?;
        let tx = conn.unchecked_transaction()?;
        let row = insert_outbox(
            &tx,
            chat_id,
            group_folder,
            OutboxKind::Reply,
            text,
            thread_id,
            Some(through_seq),
        )?;
        advance_cursor(&tx, chat_id, through_seq)?;
        tx.commit()?;
        Ok(row)
    }

    /// Advances the cursor past a batch that produced no text (e.g. an agent
    /// that only worked in files).
    pub fn complete_silently(&self, chat_id: &str, through_seq: i64) -> Result<()> {
        let conn = self.conn()?;
        advance_cursor(&conn, chat_id, through_seq)
    }

    /// Gives up on a batch: it is kept in `failed_batches`, the chat gets a
    /// notice, and the cursor moves past it — all in one transaction.
    pub fn fail_batch(&self, batch: &FailedBatch, notice: &str) -> Result<OutboxRow> {
        let conn = self.conn()?;
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO failed_batches (chat_id, group_folder, from_seq, through_seq, attempts,
                 reason, failed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                batch.chat_id,
                batch.group_folder,
                batch.from_seq,
                batch.through_seq,
                batch.attempts,
                batch.reason,
                batch.failed_at
            ],
        )?;
        let row = insert_outbox(
            &tx,
            &batch.chat_id,
            &batch.group_folder,
            OutboxKind::Notice,
            notice,
            None,
            Some(batch.through_seq),
        )?;
        advance_cursor(&tx, &batch.chat_id, batch.through_seq)?;
        tx.commit()?;
        Ok(row)
    }

    /// Queues a scheduled task's output: a reply that completes no messages.
    pub fn record_task_output(
        &self,
        chat_id: &str,
        group_folder: &str,
        text: &str,
    ) -> Result<OutboxRow> {
        let conn = self.conn()?;
        insert_outbox(
            &conn,
            chat_id,
            group_folder,
            OutboxKind::Reply,
            text,
            None,
            None,
        )
    }

    /// Queues a notice that completes nothing (e.g. a permanent error).
    pub fn record_notice(
        &self,
        chat_id: &str,
        group_folder: &str,
        text: &str,
    ) -> Result<OutboxRow> {
        let conn = self.conn()?;
        insert_outbox(
            &conn,
            chat_id,
            group_folder,
            OutboxKind::Notice,
            text,
            None,
            None,
        )
    }

    pub fn failed_batches(&self, limit: usize) -> Result<Vec<FailedBatch>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT chat_id, group_folder, from_seq, through_seq, attempts, reason, failed_at
             FROM failed_batches ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(FailedBatch {
                chat_id: r.get(0)?,
                group_folder: r.get(1)?,
                from_seq: r.get(2)?,
                through_seq: r.get(3)?,
                attempts: r.get(4)?,
                reason: r.get(5)?,
                failed_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn mark_sent(&self, outbox_id: i64) -> Result<()> {
        let conn = self.conn()?;
        conn.execute(
            "UPDATE outbox SET sent_at = ?2 WHERE id = ?1 AND sent_at IS NULL",
            params![outbox_id, now_millis()],
        )?;
        Ok(())
    }

    /// Marks `outbox_id` sent if it is still unsent and its chat passes
    /// `belongs`: how a channel takes a client's acknowledgement, which must
    /// never touch another channel's rows. Whether it marked the row.
    pub fn mark_sent_if(&self, outbox_id: i64, belongs: impl Fn(&str) -> bool) -> Result<bool> {
        let conn = self.conn()?;
        // One guard over both statements: nothing in this process marks the
        // row in between (and the UPDATE's own check covers other processes).
        let chat: Option<String> = conn
            .query_row(
                "SELECT chat_id FROM outbox WHERE id = ?1 AND sent_at IS NULL",
                [outbox_id],
                |r| r.get(0),
            )
            .optional()?;
        match chat {
            Some(chat) if belongs(&chat) => Ok(conn.execute(
                "UPDATE outbox SET sent_at = ?2 WHERE id = ?1 AND sent_at IS NULL",
                params![outbox_id, now_millis()],
            )? > 0),
            _ => Ok(false),
        }
    }

    /// Outbox rows not yet delivered, oldest first.
    pub fn unsent_outbox(&self) -> Result<Vec<OutboxRow>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT id, chat_id, group_folder, kind, text, thread_id, through_seq
             FROM outbox WHERE sent_at IS NULL ORDER BY id",
        )?;
        let rows = stmt.query_map([], outbox_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn session(&self, group_folder: &str) -> Result<Option<SessionRow>> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT session_id, last_assistant_id FROM sessions WHERE group_folder = ?1",
                [group_folder],
                |r| {
                    Ok(SessionRow {
                        session_id: r.get(0)?,
                        last_assistant_id: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn set_session(
        &self,
        group_folder: &str,
        session_id: &str,
        last_assistant_id: Option<&str>,
    ) -> Result<()> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO sessions (group_folder, session_id, last_assistant_id, updated_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (group_folder) DO UPDATE SET session_id = ?2,
                 last_assistant_id = coalesce(?3, last_assistant_id), updated_at = ?4",
            params![group_folder, session_id, last_assistant_id, now_millis()],
        )?;
        Ok(())
    }

    pub fn clear_session(&self, group_folder: &str) -> Result<()> {
        let conn = self.conn()?;
        conn.execute(
            "DELETE FROM sessions WHERE group_folder = ?1",
            [group_folder],
        )?;
        Ok(())
    }

    /// Stores a new task (its schedule already validated by the caller).
    pub fn insert_task(&self, task: &TaskRow) -> Result<()> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO scheduled_tasks (id, group_folder, chat_id, prompt, schedule_type,
                 schedule_value, context_mode, next_run, last_run, status, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                task.id,
                task.group_folder,
                task.chat_id,
                task.prompt,
                task.schedule_kind.as_str(),
                task.schedule_value,
                task.context_mode.as_str(),
                task.next_run,
                task.last_run,
                task.status.as_str(),
                task.created_at
            ],
        )?;
        Ok(())
    }

    pub fn task(&self, id: &str) -> Result<Option<TaskRow>> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                &format!("SELECT {TASK_COLUMNS} FROM scheduled_tasks WHERE id = ?1"),
                [id],
                task_row,
            )
            .optional()?)
    }

    /// Tasks of one group (`Some(folder)`) or of all groups (`None`), oldest first.
    pub fn tasks(&self, group_folder: Option<&str>) -> Result<Vec<TaskRow>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM scheduled_tasks
             WHERE ?1 IS NULL OR group_folder = ?1 ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([group_folder], task_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Sets a task's status and, when given, its next due time. `false`:
    /// no such task.
    pub fn set_task_status(
        &self,
        id: &str,
        status: TaskStatus,
        next_run: Option<UnixMillis>,
    ) -> Result<bool> {
        let conn = self.conn()?;
        let updated = conn.execute(
            "UPDATE scheduled_tasks SET status = ?2, next_run = coalesce(?3, next_run)
             WHERE id = ?1",
            params![id, status.as_str(), next_run],
        )?;
        Ok(updated == 1)
    }

    /// Replaces a task's prompt and/or schedule (`None`: unchanged). A new
    /// schedule brings its next due time and makes a completed task active
    /// again. `false`: no such task.
    pub fn update_task(
        &self,
        id: &str,
        prompt: Option<&str>,
        schedule: Option<(ScheduleKind, &str, UnixMillis)>,
    ) -> Result<bool> {
        let conn = self.conn()?;
        let tx = conn.unchecked_transaction()?;
        let mut found = tx
            .query_row("SELECT 1 FROM scheduled_tasks WHERE id = ?1", [id], |_| {
                Ok(())
            })
            .optional()?
            .is_some();
        if let Some(prompt) = prompt {
            tx.execute(
                "UPDATE scheduled_tasks SET prompt = ?2 WHERE id = ?1",
                params![id, prompt],
            )?;
        }
        if let Some((kind, value, next_run)) = schedule {
            found &= tx.execute(
                "UPDATE scheduled_tasks SET schedule_type = ?2, schedule_value = ?3, next_run = ?4,
                     status = CASE status WHEN 'completed' THEN 'active' ELSE status END
                 WHERE id = ?1",
                params![id, kind.as_str(), value, next_run],
            )? == 1;
        }
        tx.commit()?;
        Ok(found)
    }

    /// Active tasks due at or before `now`, earliest first.
    pub fn due_tasks(&self, now: UnixMillis) -> Result<Vec<TaskRow>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM scheduled_tasks
             WHERE status = 'active' AND next_run IS NOT NULL AND next_run <= ?1
             ORDER BY next_run, id"
        ))?;
        let rows = stmt.query_map([now], task_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// When the earliest active task is due, if any is.
    pub fn next_task_due(&self) -> Result<Option<UnixMillis>> {
        let conn = self.conn()?;
        Ok(conn.query_row(
            "SELECT min(next_run) FROM scheduled_tasks WHERE status = 'active'",
            [],
            |row| row.get(0),
        )?)
    }

    /// Claims the run of a task due at `due`: moves it on to `next` (or
    /// completes it) in one statement that only matches while it is still
    /// due at `due`, so one due time fires at most once, across restarts
    /// too. `false`: it was claimed, changed, paused or deleted meanwhile.
    pub fn claim_task_run(
        &self,
        id: &str,
        due: UnixMillis,
        next: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Result<bool> {
        let conn = self.conn()?;
        let status = if next.is_some() {
            "active"
        } else {
            "completed"
        };
        Ok(conn.execute(
            "UPDATE scheduled_tasks SET next_run = ?3, last_run = ?4, status = ?5
             WHERE id = ?1 AND next_run = ?2 AND status = 'active'",
            params![id, due, next, now, status],
        )? == 1)
    }

    /// Records how one run of a task went.
    pub fn log_task_run(&self, run: &TaskRunLog) -> Result<()> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO task_run_logs (task_id, run_at, duration_ms, status, result, error)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM scheduled_tasks WHERE id = ?1)",
            params![run.task_id, run.run_at, run.duration_ms, run.status, run.result, run.error],
        )?;
        Ok(())
    }

    /// A task's runs, oldest first.
    pub fn task_runs(&self, task_id: &str) -> Result<Vec<TaskRunLog>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT task_id, run_at, duration_ms, status, result, error
             FROM task_run_logs WHERE task_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([task_id], |r| {
            Ok(TaskRunLog {
                task_id: r.get(0)?,
                run_at: r.get(1)?,
                duration_ms: r.get(2)?,
                status: r.get(3)?,
                result: r.get(4)?,
                error: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes a task and its run log. `false`: no such task.
    pub fn delete_task(&self, id: &str) -> Result<bool> {
        let conn = self.conn()?;
        Ok(conn.execute("DELETE FROM scheduled_tasks WHERE id = ?1", [id])? == 1)
    }

    /// `PRAGMA integrity_check`: `Ok(true)` when the file is sound.
    pub fn integrity_ok(&self) -> Result<bool> {
        let conn = self.conn()?;
        let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        Ok(verdict == "ok")
    }
}

fn insert_outbox(
    conn: &Connection,
    chat_id: &str,
    group_folder: &str,
    kind: OutboxKind,
    text: &str,
    thread_id: Option<&str>,
    through_seq: Option<i64>,
) -> Result<OutboxRow> {
    conn.execute(
        "INSERT INTO outbox (chat_id, group_folder, kind, text, thread_id, through_seq, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            chat_id,
            group_folder,
            kind.as_str(),
            text,
            thread_id,
            through_seq,
            now_millis()
        ],
    )?;
    Ok(OutboxRow {
        id: conn.last_insert_rowid(),
        chat_id: chat_id.to_string(),
        group_folder: group_folder.to_string(),
        kind,
        text: text.to_string(),
        thread_id: thread_id.map(str::to_string),
        through_seq,
    })
}

fn advance_cursor(conn: &Connection, chat_id: &str, through_seq: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO router_state (chat_id, last_agent_seq) VALUES (?1, ?2)
         ON CONFLICT (chat_id) DO UPDATE SET last_agent_seq = max(last_agent_seq, ?2)",
        params![chat_id, through_seq],
    )?;
    Ok(())
}

fn stored_message(r: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        seq: r.get(0)?,
        chat_id: r.get(1)?,
        platform_msg_id: r.get(2)?,
        sender_id: r.get(3)?,
        sender_name: r.get(4)?,
        content: r.get(5)?,
        timestamp: r.get(6)?,
        is_from_me: r.get(7)?,
        is_bot_message: r.get(8)?,
        reply_to: r.get(9)?,
        thread_id: r.get(10)?,
    })
}

fn registered_group(r: &Row<'_>) -> rusqlite::Result<RegisteredGroup> {
    Ok(RegisteredGroup {
        chat_id: r.get(0)?,
        name: r.get(1)?,
        folder: r.get(2)?,
        trigger_pattern: r.get(3)?,
        requires_trigger: r.get(4)?,
        is_main: r.get(5)?,
        container_config: r.get(6)?,
        added_at: r.get(7)?,
    })
}

const TASK_COLUMNS: &str = "id, group_folder, chat_id, prompt, schedule_type, schedule_value,
    context_mode, next_run, last_run, status, created_at";

fn task_row(r: &Row<'_>) -> rusqlite::Result<TaskRow> {
    // The table's CHECK constraints admit only the values these parse.
    let invalid = |column: usize, value: String| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            format!("unexpected value {value:?}").into(),
        )
    };
    let kind: String = r.get(4)?;
    let mode: String = r.get(6)?;
    let status: String = r.get(9)?;
    Ok(TaskRow {
        id: r.get(0)?,
        group_folder: r.get(1)?,
        chat_id: r.get(2)?,
        prompt: r.get(3)?,
        schedule_kind: ScheduleKind::parse(&kind).ok_or_else(|| invalid(4, kind.clone()))?,
        schedule_value: r.get(5)?,
        context_mode: ContextMode::parse(&mode).ok_or_else(|| invalid(6, mode.clone()))?,
        next_run: r.get(7)?,
        last_run: r.get(8)?,
        status: TaskStatus::parse(&status).ok_or_else(|| invalid(9, status.clone()))?,
        created_at: r.get(10)?,
    })
}

fn outbox_row(r: &Row<'_>) -> rusqlite::Result<OutboxRow> {
    let kind: String = r.get(3)?;
    Ok(OutboxRow {
        id: r.get(0)?,
        chat_id: r.get(1)?,
        group_folder: r.get(2)?,
        kind: if kind == "notice" {
            OutboxKind::Notice
        } else {
            OutboxKind::Reply
        },
        text: r.get(4)?,
        thread_id: r.get(5)?,
        through_seq: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(chat: &str, id: &str, text: &str) -> InboundMessage {
        InboundMessage {
            chat_id: chat.into(),
            platform_msg_id: id.into(),
            sender_id: "u1".into(),
            sender_name: "Ann".into(),
            content: text.into(),
            timestamp: 1_700_000_000_000,
            is_from_me: false,
            is_bot_message: false,
            reply_to: None,
            thread_id: None,
        }
    }

    fn group(chat: &str, folder: &str) -> RegisteredGroup {
        RegisteredGroup {
            chat_id: chat.into(),
            name: folder.into(),
            folder: folder.into(),
            trigger_pattern: None,
            requires_trigger: true,
            is_main: false,
            container_config: None,
            added_at: 1,
        }
    }

    #[test]
    fn redelivered_message_is_stored_once() {
        let store = Store::open_in_memory().unwrap();
        let first = store
            .insert_message(&message("term:a", "m1", "hi"))
            .unwrap();
        let again = store
            .insert_message(&message("term:a", "m1", "hi"))
            .unwrap();
        assert!(first.is_some());
        assert_eq!(again, None);
        assert_eq!(store.messages_after("term:a", 0, 10).unwrap().len(), 1);
        // The same platform id in another chat is another message.
        assert!(store
            .insert_message(&message("term:b", "m1", "x"))
            .unwrap()
            .is_some());
    }

    #[test]
    fn reply_and_cursor_commit_together_and_never_go_back() {
        let store = Store::open_in_memory().unwrap();
        let s1 = store
            .insert_message(&message("c", "1", "a"))
            .unwrap()
            .unwrap();
        let s2 = store
            .insert_message(&message("c", "2", "b"))
            .unwrap()
            .unwrap();
        assert_eq!(store.cursor("c").unwrap(), 0);
        let row = store.record_reply("c", "g", "answer", None, s2).unwrap();
        assert_eq!(store.cursor("c").unwrap(), s2);
        assert_eq!(store.unsent_outbox().unwrap(), vec![row.clone()]);
        store.complete_silently("c", s1).unwrap();
        assert_eq!(store.cursor("c").unwrap(), s2, "cursor moved backwards");
        store.mark_sent(row.id).unwrap();
        assert!(store.unsent_outbox().unwrap().is_empty());
        assert!(store.messages_after("c", s2, 10).unwrap().is_empty());
    }

    #[test]
    fn a_conditional_mark_touches_only_unsent_rows_that_belong() {
        let store = Store::open_in_memory().unwrap();
        let mine = store.record_notice("sock:a", "a", "one").unwrap();
        let theirs = store.record_notice("term:local", "t", "two").unwrap();
        let is_sock = |chat: &str| chat.starts_with("sock:");
        assert!(!store.mark_sent_if(theirs.id, is_sock).unwrap());
        assert!(!store
            .mark_sent_if(mine.id + theirs.id + 1, is_sock)
            .unwrap());
        assert_eq!(store.unsent_outbox().unwrap().len(), 2);
        assert!(store.mark_sent_if(mine.id, is_sock).unwrap());
        // Already sent: nothing more to mark.
        assert!(!store.mark_sent_if(mine.id, is_sock).unwrap());
        assert_eq!(store.unsent_outbox().unwrap(), vec![theirs]);
    }

    #[test]
    fn failed_batch_is_kept_noticed_and_passed() {
        let store = Store::open_in_memory().unwrap();
        let s1 = store
            .insert_message(&message("c", "1", "a"))
            .unwrap()
            .unwrap();
        let batch = FailedBatch {
            chat_id: "c".into(),
            group_folder: "g".into(),
            from_seq: s1,
            through_seq: s1,
            attempts: 6,
            reason: "provider down".into(),
            failed_at: 5,
        };
        let notice = store.fail_batch(&batch, "could not process").unwrap();
        assert_eq!(notice.kind, OutboxKind::Notice);
        assert_eq!(store.cursor("c").unwrap(), s1);
        assert_eq!(store.failed_batches(10).unwrap(), vec![batch]);
    }

    #[test]
    fn limit_and_order_of_pending_messages() {
        let store = Store::open_in_memory().unwrap();
        for i in 0..15 {
            store
                .insert_message(&message("c", &i.to_string(), &format!("m{i}")))
                .unwrap();
        }
        let batch = store.messages_after("c", 0, 10).unwrap();
        assert_eq!(batch.len(), 10);
        assert_eq!(batch[0].content, "m0");
        assert_eq!(batch[9].content, "m9");
        assert_eq!(store.latest_seq("c").unwrap(), 15);
    }

    #[test]
    fn folders_are_validated_and_unique() {
        for bad in ["", "Main", "a/b", "..", "-x", "a_b", "global", "a b"] {
            assert!(validate_folder(bad).is_err(), "{bad:?} accepted");
        }
        validate_folder("family-chat-2").unwrap();
        let store = Store::open_in_memory().unwrap();
        store.register_group(&group("term:a", "alpha")).unwrap();
        assert!(matches!(
            store.register_group(&group("term:b", "alpha")),
            Err(StoreError::FolderTaken(_))
        ));
        let mut renamed = group("term:a", "alpha");
        renamed.name = "Alpha".into();
        store.register_group(&renamed).unwrap();
        assert_eq!(store.groups().unwrap(), vec![renamed]);
        assert!(store.group_by_chat("term:zzz").unwrap().is_none());
    }

    #[test]
    fn an_invalid_container_config_is_not_registered() {
        let store = Store::open_in_memory().unwrap();
        for bad in [
            "{not json",
            r#"{"memory_mb":2}"#,
            r#"{"secrets":["ANTHROPIC_API_KEY"]}"#,
            r#"{"colour":"red"}"#,
        ] {
            let mut g = group("term:a", "alpha");
            g.container_config = Some(bad.into());
            let err = store.register_group(&g).unwrap_err();
            assert!(
                matches!(&err, StoreError::InvalidContainerConfig(m) if m.starts_with("container config: ")),
                "{bad}: {err}"
            );
        }
        assert!(
            store.groups().unwrap().is_empty(),
            "an invalid group was stored"
        );
        for good in [
            None,
            Some(""),
            Some(r#"{"memory_mb":2048,"network":"bridge"}"#),
        ] {
            let mut g = group("term:a", "alpha");
            g.container_config = good.map(str::to_string);
            store.register_group(&g).unwrap();
            assert_eq!(store.group_by_chat("term:a").unwrap(), Some(g));
        }
    }

    #[test]
    fn container_config_is_set_replaced_and_cleared() {
        use crate::container_config::Network;
        let store = Store::open_in_memory().unwrap();
        store.register_group(&group("term:a", "alpha")).unwrap();
        let config = GroupContainerConfig {
            timeout: Some(std::time::Duration::from_secs(3600)),
            memory_mb: Some(2048),
            network: Some(Network::Bridge),
            secrets: vec!["THREADS_ACCESS_TOKEN".into()],
            ..Default::default()
        };
        store.set_container_config("term:a", Some(&config)).unwrap();
        let stored = store.group_by_chat("term:a").unwrap().unwrap();
        assert_eq!(
            GroupContainerConfig::of_group(stored.container_config.as_deref()).unwrap(),
            config
        );
        // Invalid: refused, and the previous value stays.
        let bad = GroupContainerConfig {
            cpus: Some(0.0),
            ..Default::default()
        };
        let err = store
            .set_container_config("term:a", Some(&bad))
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::InvalidContainerConfig(m) if m.contains("cpus")),
            "{err}"
        );
        let still = store.group_by_chat("term:a").unwrap().unwrap();
        assert_eq!(still.container_config, stored.container_config);
        store.set_container_config("term:a", None).unwrap();
        assert_eq!(
            store
                .group_by_chat("term:a")
                .unwrap()
                .unwrap()
                .container_config,
            None
        );
        // Only registered groups.
        let err = store
            .set_container_config("term:nobody", Some(&config))
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::UnknownGroup(chat) if chat == "term:nobody"),
            "{err}"
        );
        assert!(store.group_by_chat("term:nobody").unwrap().is_none());
    }

    #[test]
    fn sessions_keep_their_anchor() {
        let store = Store::open_in_memory().unwrap();
        store.set_session("g", "s1", Some("msg_1")).unwrap();
        store.set_session("g", "s1", None).unwrap();
        assert_eq!(
            store.session("g").unwrap(),
            Some(SessionRow {
                session_id: "s1".into(),
                last_assistant_id: Some("msg_1".into())
            })
        );
        store.clear_session("g").unwrap();
        assert_eq!(store.session("g").unwrap(), None);
    }

    fn task(id: &str, folder: &str, created_at: i64) -> TaskRow {
        TaskRow {
            id: id.into(),
            group_folder: folder.into(),
            chat_id: format!("term:{folder}"),
            prompt: "say hi".into(),
            schedule_kind: ScheduleKind::Interval,
            schedule_value: "60000".into(),
            context_mode: ContextMode::Isolated,
            next_run: Some(1_000),
            last_run: None,
            status: TaskStatus::Active,
            created_at,
        }
    }

    #[test]
    fn tasks_are_stored_listed_by_group_and_changed() {
        let store = Store::open_in_memory().unwrap();
        let a = task("t1", "alpha", 1);
        let b = task("t2", "beta", 2);
        store.insert_task(&a).unwrap();
        store.insert_task(&b).unwrap();
        assert_eq!(store.task("t1").unwrap(), Some(a.clone()));
        assert_eq!(store.tasks(Some("alpha")).unwrap(), vec![a.clone()]);
        assert_eq!(store.tasks(None).unwrap(), vec![a.clone(), b.clone()]);

        assert!(store
            .set_task_status("t1", TaskStatus::Paused, None)
            .unwrap());
        let paused = store.task("t1").unwrap().unwrap();
        assert_eq!(paused.status, TaskStatus::Paused);
        assert_eq!(paused.next_run, Some(1_000), "pausing kept the due time");
        assert!(store
            .set_task_status("t1", TaskStatus::Active, Some(5_000))
            .unwrap());
        assert_eq!(store.task("t1").unwrap().unwrap().next_run, Some(5_000));

        assert!(store
            .update_task(
                "t1",
                Some("new prompt"),
                Some((ScheduleKind::Cron, "0 9 * * *", 9_000))
            )
            .unwrap());
        let updated = store.task("t1").unwrap().unwrap();
        assert_eq!(updated.prompt, "new prompt");
        assert_eq!(updated.schedule_kind, ScheduleKind::Cron);
        assert_eq!(updated.schedule_value, "0 9 * * *");
        assert_eq!(updated.next_run, Some(9_000));

        assert!(store.delete_task("t1").unwrap());
        assert_eq!(store.task("t1").unwrap(), None);
        assert_eq!(store.tasks(None).unwrap(), vec![b]);
    }

    #[test]
    fn a_due_time_is_claimed_once_and_runs_are_logged() {
        let store = Store::open_in_memory().unwrap();
        store.insert_task(&task("t1", "g", 1)).unwrap();
        let mut later = task("t2", "g", 2);
        later.next_run = Some(5_000);
        store.insert_task(&later).unwrap();
        let due: Vec<String> = store
            .due_tasks(2_000)
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(due, vec!["t1"]);
        assert_eq!(store.next_task_due().unwrap(), Some(1_000));
        assert!(store
            .claim_task_run("t1", 1_000, Some(61_000), 2_000)
            .unwrap());
        // A second claim of the same due time (a restart, a race) loses.
        assert!(!store
            .claim_task_run("t1", 1_000, Some(61_000), 2_000)
            .unwrap());
        let claimed = store.task("t1").unwrap().unwrap();
        assert_eq!(
            (claimed.next_run, claimed.last_run),
            (Some(61_000), Some(2_000))
        );
        assert_eq!(store.next_task_due().unwrap(), Some(5_000));
        // A finished once-task completes; a paused one cannot be claimed.
        assert!(store.claim_task_run("t2", 5_000, None, 5_000).unwrap());
        assert_eq!(
            store.task("t2").unwrap().unwrap().status,
            TaskStatus::Completed
        );
        store
            .set_task_status("t1", TaskStatus::Paused, None)
            .unwrap();
        assert!(!store
            .claim_task_run("t1", 61_000, Some(121_000), 61_000)
            .unwrap());
        let run = TaskRunLog {
            task_id: "t1".into(),
            run_at: 2_000,
            duration_ms: 40,
            status: "success".into(),
            result: Some("hi".into()),
            error: None,
        };
        store.log_task_run(&run).unwrap();
        assert_eq!(store.task_runs("t1").unwrap(), vec![run]);
    }

    #[test]
    fn unknown_tasks_are_reported_not_created() {
        let store = Store::open_in_memory().unwrap();
        assert!(!store
            .set_task_status("nope", TaskStatus::Paused, None)
            .unwrap());
        assert!(!store.update_task("nope", Some("x"), None).unwrap());
        assert!(!store.delete_task("nope").unwrap());
        assert!(store.tasks(None).unwrap().is_empty());
    }

    #[test]
    fn a_new_schedule_revives_a_completed_task() {
        let store = Store::open_in_memory().unwrap();
        let mut done = task("t1", "alpha", 1);
        done.status = TaskStatus::Completed;
        store.insert_task(&done).unwrap();
        store.update_task("t1", Some("again"), None).unwrap();
        assert_eq!(
            store.task("t1").unwrap().unwrap().status,
            TaskStatus::Completed
        );
        store
            .update_task(
                "t1",
                None,
                Some((ScheduleKind::Once, "2030-01-01T00:00:00Z", 7)),
            )
            .unwrap();
        assert_eq!(
            store.task("t1").unwrap().unwrap().status,
            TaskStatus::Active
        );
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("talon.db");
        drop(Store::open(&path).unwrap());
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
        assert!(err.to_string().contains("newer"));
        // Reopening an up-to-date file is fine and keeps data.
        let path2 = dir.path().join("b.db");
        let store = Store::open(&path2).unwrap();
        store.insert_message(&message("c", "1", "a")).unwrap();
        drop(store);
        let store = Store::open(&path2).unwrap();
        assert_eq!(store.latest_seq("c").unwrap(), 1);
        assert!(store.integrity_ok().unwrap());
    }
}
