//! Ordered, rate-limit-aware delivery of outbox rows to a platform.
//!
//! Every chat gets its own *lane*: a task that sends that chat's rows one at
//! a time, each split into parts within the platform's limit. A 429 (or a
//! 5xx) holds back only its own chat, for the server's `Retry-After`, so
//! per-chat order holds while other chats go on. A row is marked sent once
//! all its parts are out. One classification ([`ErrorKind`]) decides what a
//! failure means, in [`after_failure`]: rate limited and temporary → wait and
//! retry; a refused token → the adapter stops (fatal); anything else → the
//! row is given up on and logged (its text stays in the store).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use super::split::{split_message, Limit};
use super::RecentKeys;
use crate::messages::wire::ErrorKind;
use crate::provider::{retry_delay, RetryPolicy};
use crate::store::{OutboxRow, Store};

/// Why one post did not go through.
#[derive(Debug, Clone, PartialEq)]
pub struct SendFailure {
    pub kind: ErrorKind,
    /// What the server asked us to wait, if it said.
    pub retry_after: Option<Duration>,
    pub detail: String,
}

impl SendFailure {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> SendFailure {
        SendFailure {
            kind,
            retry_after: None,
            detail: detail.into(),
        }
    }
}

/// The outbound half of a platform: posting one message part to one chat.
pub trait Poster: Send + Sync + 'static {
    /// The platform's message limit.
    fn limit(&self) -> Limit;

    /// The reply as the platform should get it, before it is split (e.g.
    /// with broadcast mentions made harmless).
    fn render(&self, text: &str) -> String {
        text.to_string()
    }

    /// Posts `text` to `chat` (the platform's own channel id, without the
    /// talon prefix), in `thread` when given.
    fn post(
        &self,
        chat: &str,
        thread: Option<&str>,
        text: &str,
    ) -> impl Future<Output = Result<(), SendFailure>> + Send;
}

/// How long and how often a failing part is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeliveryPolicy {
    /// Attempts per part, the first included.
    pub max_attempts: u32,
    /// The first wait when the server gives no `Retry-After`; doubled after.
    pub base: Duration,
    /// No single wait is longer, whatever the server asks.
    pub max_delay: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            max_attempts: 8,
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
        }
    }
}

/// What to do after a part failed on attempt `attempt` (1-based).
#[derive(Debug, Clone, PartialEq)]
pub enum NextStep {
    Retry(Duration),
    /// Retrying cannot help; the row is given up on.
    GiveUp,
    /// The platform refused our credentials: stop the adapter.
    Fatal,
}

pub fn after_failure(policy: &DeliveryPolicy, attempt: u32, failure: &SendFailure) -> NextStep {
    match failure.kind {
        ErrorKind::Auth => NextStep::Fatal,
        ErrorKind::Permanent => NextStep::GiveUp,
        ErrorKind::RateLimited | ErrorKind::Temporary | ErrorKind::Unavailable
            if attempt >= policy.max_attempts =>
        {
            NextStep::GiveUp
        }
        ErrorKind::RateLimited | ErrorKind::Temporary | ErrorKind::Unavailable => {
            let retry = RetryPolicy {
                max_retries: policy.max_attempts,
                base: policy.base,
                max_delay: policy.max_delay,
                ..RetryPolicy::default()
            };
            NextStep::Retry(retry_delay(&retry, attempt, failure.retry_after))
        }
    }
}

/// The platform's own channel id in a talon chat id (`slack:C1` → `C1`).
pub fn platform_chat(chat_id: &str) -> &str {
    chat_id.split_once(':').map_or(chat_id, |(_, id)| id)
}

/// Called once when a lane meets a refused token.
pub type OnFatal = Arc<dyn Fn(String) + Send + Sync>;

/// Counters shared by the lanes, for the state dump.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    pub parts: AtomicU64,
    pub retried: AtomicU64,
    pub given_up: AtomicU64,
}

/// Outbox ids remembered as handed to a lane, so a row that arrives twice
/// (from its queue and from a restart's redelivery) is sent once.
const REMEMBERED_IDS: usize = 4096;

/// One lane per chat; see the module docs.
pub struct Lanes<P: Poster> {
    poster: Arc<P>,
    store: Store,
    policy: DeliveryPolicy,
    on_fatal: OnFatal,
    lanes: HashMap<String, mpsc::UnboundedSender<OutboxRow>>,
    taken: RecentKeys<i64>,
    stats: Arc<DeliveryStats>,
}

impl<P: Poster> Lanes<P> {
    pub fn new(poster: Arc<P>, store: Store, policy: DeliveryPolicy, on_fatal: OnFatal) -> Self {
        Lanes {
            poster,
            store,
            policy,
            on_fatal,
            lanes: HashMap::new(),
            taken: RecentKeys::new(REMEMBERED_IDS),
            stats: Arc::default(),
        }
    }

    /// Queues `row` on its chat's lane (starting the lane if needed).
    pub fn deliver(&mut self, row: OutboxRow) {
        if !self.taken.first_time(row.id) {
            return;
        }
        let chat = row.chat_id.clone();
        let row = match self.lanes.get(&chat) {
            Some(lane) => match lane.send(row) {
                Ok(()) => return,
                // The lane ended (a fatal error); start a fresh one.
                Err(mpsc::error::SendError(row)) => row,
            },
            None => row,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(row);
        self.lanes.insert(chat, tx);
        tokio::spawn(run_lane(
            rx,
            self.poster.clone(),
            self.store.clone(),
            self.policy,
            self.on_fatal.clone(),
            self.stats.clone(),
        ));
    }

    pub fn stats(&self) -> serde_json::Value {
        let s = &self.stats;
        json!({
            "chats": self.lanes.len(),
            "delivered": s.delivered.load(Ordering::Relaxed),
            "parts_sent": s.parts.load(Ordering::Relaxed),
            "retries": s.retried.load(Ordering::Relaxed),
            "given_up": s.given_up.load(Ordering::Relaxed),
        })
    }
}

impl<P: Poster> Drop for Lanes<P> {
    fn drop(&mut self) {
        // Closing the senders ends each lane after its current row.
        self.lanes.clear();
    }
}

async fn run_lane<P: Poster>(
    mut rows: mpsc::UnboundedReceiver<OutboxRow>,
    poster: Arc<P>,
    store: Store,
    policy: DeliveryPolicy,
    on_fatal: OnFatal,
    stats: Arc<DeliveryStats>,
) {
    while let Some(row) = rows.recv().await {
        match send_row(&*poster, &row, &policy, &stats).await {
            RowOutcome::Sent => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                mark_sent(&store, &row);
            }
            RowOutcome::GaveUp(reason) => {
                stats.given_up.fetch_add(1, Ordering::Relaxed);
                tracing::error!(chat = %row.chat_id, outbox_id = row.id, %reason,
                    "reply could not be delivered and is given up on (its text stays in the outbox)");
                mark_sent(&store, &row);
            }
            RowOutcome::Fatal(reason) => {
                // The row stays unsent: a fixed token delivers it later.
                on_fatal(reason);
                return;
            }
        }
    }
}

fn mark_sent(store: &Store, row: &OutboxRow) {
    if let Err(e) = store.mark_sent(row.id) {
        tracing::error!(outbox_id = row.id, error = %e, "cannot mark a delivered reply as sent");
    }
}

enum RowOutcome {
    Sent,
    GaveUp(String),
    Fatal(String),
}

async fn send_row<P: Poster>(
    poster: &P,
    row: &OutboxRow,
    policy: &DeliveryPolicy,
    stats: &DeliveryStats,
) -> RowOutcome {
    let chat = platform_chat(&row.chat_id);
    for part in split_message(&poster.render(&row.text), poster.limit()) {
        let mut attempt = 1;
        loop {
            match poster.post(chat, row.thread_id.as_deref(), &part).await {
                Ok(()) => {
                    stats.parts.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(failure) => match after_failure(policy, attempt, &failure) {
                    NextStep::Retry(delay) => {
                        stats.retried.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(chat = %row.chat_id, attempt, ?delay, kind = ?failure.kind,
                            detail = %failure.detail, "posting a reply failed; retrying");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    NextStep::GiveUp => return RowOutcome::GaveUp(failure.detail),
                    NextStep::Fatal => return RowOutcome::Fatal(failure.detail),
                },
            }
        }
    }
    RowOutcome::Sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::split::{Limit, Measure};
    use std::collections::VecDeque;
    use std::sync::Mutex;

    fn failure(kind: ErrorKind, retry_after: Option<u64>) -> SendFailure {
        SendFailure {
            kind,
            retry_after: retry_after.map(Duration::from_secs),
            detail: "x".into(),
        }
    }

    #[test]
    fn the_classification_alone_decides() {
        let policy = DeliveryPolicy::default();
        assert_eq!(
            after_failure(&policy, 1, &failure(ErrorKind::RateLimited, Some(7))),
            NextStep::Retry(Duration::from_secs(7))
        );
        assert_eq!(
            after_failure(&policy, 3, &failure(ErrorKind::Temporary, None)),
            NextStep::Retry(Duration::from_secs(4))
        );
        assert_eq!(
            after_failure(&policy, 1, &failure(ErrorKind::Auth, None)),
            NextStep::Fatal
        );
        assert_eq!(
            after_failure(&policy, 1, &failure(ErrorKind::Permanent, None)),
            NextStep::GiveUp
        );
        assert_eq!(
            after_failure(&policy, 8, &failure(ErrorKind::RateLimited, Some(1))),
            NextStep::GiveUp
        );
        // A server asking for an hour is capped.
        assert_eq!(
            after_failure(&policy, 1, &failure(ErrorKind::RateLimited, Some(3600))),
            NextStep::Retry(Duration::from_secs(300))
        );
    }

    #[test]
    fn the_platform_chat_is_after_the_prefix() {
        assert_eq!(platform_chat("slack:C123"), "C123");
        assert_eq!(platform_chat("dc:42"), "42");
        assert_eq!(platform_chat("bare"), "bare");
    }

    /// A poster that fails as scripted and records what it sent, with the
    /// (paused) time of each attempt.
    struct Scripted {
        script: Mutex<VecDeque<Result<(), SendFailure>>>,
        sent: Mutex<Vec<(String, String, tokio::time::Instant)>>,
        limit: Limit,
    }

    impl Poster for Scripted {
        fn limit(&self) -> Limit {
            self.limit
        }

        async fn post(
            &self,
            chat: &str,
            _thread: Option<&str>,
            text: &str,
        ) -> Result<(), SendFailure> {
            let next = self.script.lock().unwrap().pop_front().unwrap_or(Ok(()));
            if next.is_ok() {
                self.sent.lock().unwrap().push((
                    chat.to_string(),
                    text.to_string(),
                    tokio::time::Instant::now(),
                ));
            }
            next
        }
    }

    fn row(store: &Store, chat: &str, text: &str) -> OutboxRow {
        store.record_notice(chat, "g", text).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_chat_waits_while_order_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let poster = Arc::new(Scripted {
            script: Mutex::new(VecDeque::from([Err(failure(
                ErrorKind::RateLimited,
                Some(5),
            ))])),
            sent: Mutex::default(),
            limit: Limit {
                max: 10,
                measure: Measure::Chars,
            },
        });
        let fatal: OnFatal = Arc::new(|_| panic!("not fatal"));
        let mut lanes = Lanes::new(
            poster.clone(),
            store.clone(),
            DeliveryPolicy::default(),
            fatal,
        );
        let start = tokio::time::Instant::now();
        let first = row(&store, "dc:1", "first part. second part.");
        let second = row(&store, "dc:1", "after");
        let other = row(&store, "dc:2", "other chat");
        lanes.deliver(first.clone());
        lanes.deliver(first.clone()); // a repeat is ignored
        lanes.deliver(second);
        lanes.deliver(other);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let sent = poster.sent.lock().unwrap().clone();
        let chat1: Vec<&str> = sent
            .iter()
            .filter(|(c, _, _)| c == "1")
            .map(|(_, t, _)| t.as_str())
            .collect();
        // Split within the limit, in order, then the next row.
        assert!(chat1.len() > 2, "{chat1:?}");
        assert!(chat1.iter().all(|part| part.chars().count() <= 10));
        assert_eq!(chat1.last(), Some(&"after"));
        assert_eq!(
            chat1[..chat1.len() - 1].concat(),
            "first part. second part."
        );
        // The 429 held chat 1 for its Retry-After, not chat 2.
        let waited = sent[..].iter().find(|(c, _, _)| c == "1").unwrap().2 - start;
        assert!(waited >= Duration::from_secs(5), "{waited:?}");
        let other_at = sent.iter().find(|(c, _, _)| c == "2").unwrap().2 - start;
        assert!(other_at < Duration::from_secs(1), "{other_at:?}");
        assert!(store.unsent_outbox().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_reported_once_and_the_row_stays_unsent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let poster = Arc::new(Scripted {
            script: Mutex::new(VecDeque::from([Err(failure(ErrorKind::Auth, None))])),
            sent: Mutex::default(),
            limit: Limit {
                max: 100,
                measure: Measure::Chars,
            },
        });
        let reports = Arc::new(Mutex::new(Vec::new()));
        let seen = reports.clone();
        let fatal: OnFatal = Arc::new(move |reason| seen.lock().unwrap().push(reason));
        let mut lanes = Lanes::new(poster, store.clone(), DeliveryPolicy::default(), fatal);
        let refused = row(&store, "slack:C1", "hello");
        lanes.deliver(refused.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(reports.lock().unwrap().len(), 1);
        let unsent: Vec<i64> = store
            .unsent_outbox()
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(unsent, vec![refused.id]);
    }
}
