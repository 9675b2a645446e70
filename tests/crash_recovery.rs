//! Crash recovery, the proof of issue 4 ("Group queue reliability"): the
//! real host process (`talon run`), real Docker and the agent image, the
//! fake model and the local socket channel. Numbered messages go to several
//! groups while the host is SIGKILLed at random moments and restarted each
//! time; a last host then runs until every message has been answered.
//!
//! What must hold at the end, whatever the kills hit:
//! * every message got at least one reply (a lost message fails the test);
//! * a reply seen twice is the same outbox row written twice (a kill between
//!   writing it and marking it sent), so there are at most as many such
//!   repeats as kills, and no message is ever answered by two agent runs;
//! * `PRAGMA integrity_check` is ok and nothing is left in the outbox;
//! * no container of this home is left once the last host has stopped.
//!
//! Timing is random (seeded: set TALON_CRASH_SEED to replay or explore);
//! the assertions are not.

#[path = "support/socket_client.rs"]
mod socket_client;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::fake_anthropic::{FakeAnthropic, Reply};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const GROUPS: usize = 5;
const MESSAGES: usize = 220;
const KILLS: usize = 22;
/// How long the last host gets to answer everything still open.
const FINAL_LIMIT: Duration = Duration::from_secs(120);
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
/// A killed host exits at once; a stopping one drains within this.
const EXIT_LIMIT: Duration = Duration::from_secs(60);
const DEFAULT_SEED: u64 = 0x7a10_c4a5_11ed_2024;

/// xorshift64*: small, seeded, good enough to spread kill moments.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

fn chat_of(message: usize) -> String {
    format!("sock:g{}", message % GROUPS)
}

/// The message numbers in a text: every `m<digits>` word.
fn numbers_in(text: &str) -> Vec<usize> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(|word| word.strip_prefix('m')?.parse().ok())
        .collect()
}

/// The numbers of the messages in a prompt: the text of each
/// `<message …>m<N></message>`.
fn numbers_in_prompt(prompt: &str) -> Vec<usize> {
    prompt
        .split("</message>")
        .filter_map(|part| {
            let text = &part[part.rfind('>')? + 1..];
            text.strip_prefix('m')?.parse().ok()
        })
        .collect()
}

/// What the client has seen.
#[derive(Default)]
struct Tally {
    /// Per message: the outbox rows whose reply named it.
    rows_of: BTreeMap<usize, BTreeSet<i64>>,
    /// Per outbox row: how many times it arrived.
    copies: BTreeMap<i64, u32>,
    replies: usize,
    notices: Vec<String>,
}

impl Tally {
    fn take(&mut self, line: &Value) {
        if line["type"] != "reply" {
            return; // settled lines carry nothing to count
        }
        let text = line["text"].as_str().unwrap_or_default();
        if line["kind"] == "notice" {
            self.notices.push(text.to_string());
            return;
        }
        let id = line["outbox_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("a reply without an outbox id: {line}"));
        self.replies += 1;
        *self.copies.entry(id).or_default() += 1;
        for n in numbers_in(text) {
            self.rows_of.entry(n).or_default().insert(id);
        }
    }

    fn answered(&self, message: usize) -> bool {
        self.rows_of.contains_key(&message)
    }

    fn open(&self, released: usize) -> Vec<usize> {
        (0..released).filter(|n| !self.answered(*n)).collect()
    }

    /// Extra copies of rows that arrived more than once.
    fn repeated_copies(&self) -> u32 {
        self.copies.values().map(|c| c - 1).sum()
    }

    /// Messages that arrived answered more than once (by any row copy).
    fn answered_more_than_once(&self) -> Vec<usize> {
        self.rows_of
            .iter()
            .filter(|(_, rows)| rows.iter().map(|id| self.copies[id]).sum::<u32>() > 1)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// The test's connection to one host's socket.
struct Connection {
    lines: mpsc::UnboundedReceiver<Value>,
    writer: tokio::net::unix::OwnedWriteHalf,
    reader: tokio::task::JoinHandle<()>,
}

struct RunningHost {
    child: Child,
    /// None when the host was killed before it accepted.
    connection: Option<Connection>,
}

fn spawn_host(env: &[(String, String)], home: &Home, round: usize) -> Child {
    let log = std::fs::File::create(home.path().join(format!("logs/host-{round}.stderr")))
        .expect("host stderr log");
    talon(env)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn talon run")
}

/// Connects to the host's socket (waiting up to `limit` for it to accept)
/// and (re)sends `messages`.
async fn connect_and_send(home: &Home, messages: &[usize], limit: Duration) -> Option<Connection> {
    let socket = home.path().join("data/talon.sock");
    let client = socket_client::try_connect(&socket, limit).await?;
    let (mut lines, mut writer) = client.into_parts();
    let (tx, rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("talon sent a line that is not JSON ({e}): {line}"));
            if tx.send(value).is_err() {
                break;
            }
        }
    });
    let mut batch = String::new();
    for n in messages {
        batch.push_str(&socket_client::message_line(
            &chat_of(*n),
            &format!("m{n}"),
            &format!("m{n}"),
        ));
    }
    // A host that dies meanwhile is fine: what did not get in is resent.
    let _ = writer.write_all(batch.as_bytes()).await;
    Some(Connection {
        lines: rx,
        writer,
        reader,
    })
}

fn host_stderr(home: &Home, round: usize) -> String {
    std::fs::read_to_string(home.path().join(format!("logs/host-{round}.stderr")))
        .unwrap_or_default()
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// Waits (bounded) for the host to exit and for its connection to close,
/// then counts everything it wrote.
async fn finish(host: RunningHost, tally: &mut Tally) -> std::process::ExitStatus {
    let RunningHost {
        mut child,
        connection,
    } = host;
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + EXIT_LIMIT;
        loop {
            if let Some(status) = child.try_wait().expect("poll talon") {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("join the wait")
    .unwrap_or_else(|| panic!("the host did not exit within {EXIT_LIMIT:?}"));
    if let Some(Connection {
        mut lines,
        writer,
        reader,
    }) = connection
    {
        drop(writer);
        // The process is gone, so its end of the socket is closed.
        tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the connection closed with the host")
            .expect("the reader task");
        while let Ok(line) = lines.try_recv() {
            tally.take(&line);
        }
    }
    status
}

async fn register_groups(env: &[(String, String)]) {
    for g in 0..GROUPS {
        let chat = format!("sock:g{g}");
        let folder = format!("g{g}");
        let added = talon(env)
            .args([
                "groups", "add", &chat, "--name", &folder, "--folder", &folder,
            ])
            .arg("--no-trigger")
            .output()
            .expect("talon groups add");
        assert!(added.status.success(), "{}", stderr_of(&added));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_message_is_lost_when_the_host_is_killed_at_random_moments() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let started = Instant::now();
    let seed = std::env::var("TALON_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let mut rng = Rng::new(seed);
    let model = FakeAnthropic::start_with(|body| {
        let numbers = numbers_in_prompt(&last_user_text(body));
        let words: Vec<String> = numbers.iter().map(|n| format!("m{n}")).collect();
        Reply::text(format!("answered {}", words.join(" ")))
    })
    .await;
    let home = Home::new();
    let mut env = host_env(home.path(), &model.base_url);
    env.extend(
        [
            ("TALON_CHANNELS_SOCKET", "true"),
            ("TALON_CONTAINER_IDLE_TIMEOUT", "1s"),
            ("TALON_QUEUE_RETRY_BASE", "50ms"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    register_groups(&env).await;

    let mut tally = Tally::default();
    let mut early_kills = 0;
    for round in 0..KILLS {
        // Messages arrive over the rounds; each round resends what is open.
        let released = (round + 1) * MESSAGES / (KILLS + 1);
        let open = tally.open(released);
        let child = spawn_host(&env, &home, round);
        // One kill in five lands early, in startup recovery (removing
        // orphans, requeueing, redelivering), connected or not yet.
        let early = rng.between(0, 4) == 0;
        let (connection, delay) = if early {
            early_kills += 1;
            let delay = Duration::from_millis(rng.between(10, 600));
            let kill_at = tokio::time::Instant::now() + delay;
            let connection = connect_and_send(&home, &open, delay).await;
            tokio::time::sleep_until(kill_at).await;
            (connection, delay)
        } else {
            let Some(connection) = connect_and_send(&home, &open, CONNECT_LIMIT).await else {
                signal(&child, libc::SIGKILL);
                panic!(
                    "round {round}: the host did not accept on its socket: {}",
                    host_stderr(&home, round)
                );
            };
            let delay = Duration::from_millis(rng.between(50, 1500));
            tokio::time::sleep(delay).await;
            (Some(connection), delay)
        };
        signal(&child, libc::SIGKILL);
        let connected = connection.is_some();
        let before = tally.replies;
        finish(RunningHost { child, connection }, &mut tally).await;
        let moment = match (early, connected) {
            (true, true) => "start (connected)".to_string(),
            (true, false) => "start (not yet accepting)".to_string(),
            (false, _) => format!("sending {} messages", open.len()),
        };
        eprintln!(
            "round {round:2}: killed {:4} ms after {moment}, {:3} reply lines, {:3} of {released} answered",
            delay.as_millis(),
            tally.replies - before,
            released - tally.open(released).len()
        );
    }

    // The last host runs until every message has been answered.
    let open = tally.open(MESSAGES);
    let child = spawn_host(&env, &home, KILLS);
    let Some(mut connection) = connect_and_send(&home, &open, CONNECT_LIMIT).await else {
        signal(&child, libc::SIGKILL);
        panic!(
            "the last host did not accept on its socket: {}",
            host_stderr(&home, KILLS)
        );
    };
    let deadline = Instant::now() + FINAL_LIMIT;
    while !tally.open(MESSAGES).is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, connection.lines.recv()).await {
            Ok(Some(line)) => tally.take(&line),
            Ok(None) => panic!(
                "the last host closed the connection: {}",
                host_stderr(&home, KILLS)
            ),
            Err(_) => break,
        }
    }
    signal(&child, libc::SIGTERM);
    let status = finish(
        RunningHost {
            child,
            connection: Some(connection),
        },
        &mut tally,
    )
    .await;

    let missing = tally.open(MESSAGES);
    let twice = tally.answered_more_than_once();
    let repeated_rows: Vec<(i64, u32)> = tally
        .copies
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(id, c)| (*id, *c))
        .collect();
    let duplicates = tally.repeated_copies();
    let summary = format!(
        "messages: {MESSAGES}, replies: {}, answered twice: {duplicates}, kills: {KILLS}",
        tally.replies
    );
    println!("{summary}");
    // Kept where .ci/run prints it: a passing test's output is captured.
    let _ = std::fs::write(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/crash-recovery-summary.txt"
        ),
        format!("{summary}\n"),
    );
    println!(
        "seed {seed:#x}; {early_kills} of the kills during startup; model requests: {}; rows written more than once (id, copies): {repeated_rows:?}; \
         messages in them: {twice:?}; failure notices: {:?}; took {:.1} s",
        model.request_count(),
        tally.notices,
        started.elapsed().as_secs_f64()
    );

    assert!(
        missing.is_empty(),
        "{} messages were never answered: {missing:?}; notices: {:?}; last host: {}",
        missing.len(),
        tally.notices,
        host_stderr(&home, KILLS)
    );
    assert!(status.success(), "the last host exited with {status:?}");
    // A message answered twice is one row written twice, never two runs.
    let rerun: Vec<_> = tally
        .rows_of
        .iter()
        .filter(|(_, rows)| rows.len() > 1)
        .collect();
    assert!(
        rerun.is_empty(),
        "messages answered by more than one agent run: {rerun:?}"
    );
    assert!(
        duplicates as usize <= KILLS,
        "{duplicates} repeated replies from {KILLS} kills"
    );
    let store = talon::store::Store::open(&home.paths().db()).expect("open the store");
    assert!(store.integrity_ok().expect("integrity check"));
    let owed = store.unsent_outbox().expect("read the outbox");
    assert!(owed.is_empty(), "replies never delivered: {owed:?}");
    let left = talon_containers(home.path());
    assert!(left.is_empty(), "containers left behind: {left:?}");
}

#[test]
fn prompt_and_reply_numbers_are_read_back() {
    let prompt = "<context timezone=\"UTC\"/>\n<messages>\n\
        <message sender=\"tester\" time=\"2024-01-01 00:00\">m3</message>\n\
        <message sender=\"tester\" time=\"2024-01-01 00:00\">m14</message>\n</messages>";
    assert_eq!(numbers_in_prompt(prompt), vec![3, 14]);
    assert_eq!(numbers_in("answered m3 m14"), vec![3, 14]);
    assert_eq!(numbers_in("answered"), Vec::<usize>::new());
    let mut rng = Rng::new(7);
    let delays: Vec<u64> = (0..100).map(|_| rng.between(50, 1500)).collect();
    assert!(delays.iter().all(|d| (50..=1500).contains(d)));
    assert!(delays.iter().collect::<BTreeSet<_>>().len() > 50);
}
