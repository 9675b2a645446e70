//! Crash recovery, the proof of issue 4 ("Group queue reliability"): the
//! real host process (`talon run`), real Docker and the agent image, the
//! fake model and the local socket channel. Numbered messages go to several
//! groups while the host is SIGKILLed at random moments and restarted each
//! time; a last host then runs until every message has been answered. The
//! test's client acks each reply and dedupes by `outbox_id`, and it hangs up
//! and reconnects often: after a few replies (sometimes between a reply and
//! its ack) or after a short while, resending what is still open.
//!
//! What must hold at the end, whatever the kills and hang-ups hit:
//! * every message got at least one reply (a lost message fails the test);
//! * a reply seen twice is the same outbox row (one not acknowledged when
//!   its connection ended, written again to the next), never twice to one
//!   connection, and no message is ever answered by two agent runs;
//! * `PRAGMA integrity_check` is ok and nothing is left in the outbox (every
//!   reply was acknowledged);
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
use socket_client::{Memory, Read, SocketClient};
use support::fake_anthropic::{FakeAnthropic, Reply};
use support::*;
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
/// A connection of the client lasts this long at most (ms, low and high).
const RECONNECT_MS: (u64, u64) = (200, 900);

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
    /// Per outbox row: how many times it arrived (notices too).
    copies: BTreeMap<i64, u32>,
    /// (connection, outbox id) pairs seen, and those seen twice: talon
    /// writes a row to one connection once, however often it is handed over.
    on_connection: BTreeSet<(usize, i64)>,
    twice_on_one_connection: Vec<(usize, i64)>,
    /// Lines where the client's dedupe disagreed with the tally.
    misjudged: Vec<Value>,
    /// Distinct reply rows (not notices).
    replies: usize,
    notices: Vec<String>,
}

impl Tally {
    fn take(&mut self, seen: Seen) {
        let Seen {
            connection,
            line,
            repeat,
        } = seen;
        if line["type"] != "reply" {
            return; // settled lines carry nothing to count
        }
        let id = line["outbox_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("a reply without an outbox id: {line}"));
        if !self.on_connection.insert((connection, id)) {
            self.twice_on_one_connection.push((connection, id));
        }
        let copies = self.copies.entry(id).or_default();
        *copies += 1;
        if repeat != (*copies > 1) {
            self.misjudged.push(line.clone());
        }
        if *copies > 1 {
            return; // deduped by its outbox id
        }
        let text = line["text"].as_str().unwrap_or_default();
        if line["kind"] == "notice" {
            self.notices.push(text.to_string());
            return;
        }
        self.replies += 1;
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

/// One line as the client read it.
struct Seen {
    /// Which connection of the test (counting from 0) it came on.
    connection: usize,
    line: Value,
    /// The client had seen its outbox id before.
    repeat: bool,
}

/// When a connection of the test's client hangs up by itself (unless the
/// host dies first): after `replies` reply lines, acking the last of them
/// or not (a drop between reply and ack), or after `lifetime`.
#[derive(Clone, Copy)]
struct Plan {
    replies: usize,
    ack_last: bool,
    lifetime: Duration,
}

impl Plan {
    fn random(rng: &mut Rng) -> Plan {
        Plan {
            replies: rng.between(1, 3) as usize,
            ack_last: rng.between(0, 1) == 0,
            lifetime: Duration::from_millis(rng.between(RECONNECT_MS.0, RECONNECT_MS.1)),
        }
    }
}

/// The test's connection to one host's socket: a task that reads, acks and
/// passes on lines until its plan or the host ends it, and then hands back
/// what the client remembers.
struct Connection {
    task: tokio::task::JoinHandle<Ended>,
}

/// What a connection's task hands back.
struct Ended {
    memory: Memory,
    /// It hung up right after a reply it did not ack.
    before_an_ack: bool,
}

impl Connection {
    /// Waits for the connection to end by itself; never, with none.
    async fn ended(connection: &mut Option<Connection>) -> Ended {
        match connection {
            Some(connection) => (&mut connection.task).await.expect("the client task"),
            None => std::future::pending().await,
        }
    }
}

async fn read_lines(
    mut client: SocketClient,
    number: usize,
    plan: Plan,
    lines: mpsc::UnboundedSender<Seen>,
) -> Ended {
    let until = tokio::time::Instant::now() + plan.lifetime;
    let mut replies = 0;
    let mut before_an_ack = false;
    loop {
        if replies + 1 == plan.replies {
            client.set_auto_ack(plan.ack_last);
        }
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let (line, repeat) = match client.read(left).await {
            Read::Line(line) => (line, false),
            Read::Repeat(line) => (line, true),
            Read::Nothing | Read::Closed => break,
        };
        let is_reply = line["type"] == "reply";
        let _ = lines.send(Seen {
            connection: number,
            line,
            repeat,
        });
        if is_reply {
            replies += 1;
            if replies == plan.replies {
                before_an_ack = !plan.ack_last;
                break;
            }
        }
    }
    let mut memory = client.into_memory();
    memory.auto_ack = true;
    Ended {
        memory,
        before_an_ack,
    }
}

/// The client over the whole test: what it remembers between connections
/// and what it has read.
struct Client {
    memory: Memory,
    connections: usize,
    /// Connections it dropped between a reply and its ack.
    hung_up_before_an_ack: usize,
    lines: mpsc::UnboundedReceiver<Seen>,
    send: mpsc::UnboundedSender<Seen>,
    tally: Tally,
}

impl Client {
    fn new() -> Client {
        let (send, lines) = mpsc::unbounded_channel();
        Client {
            memory: Memory::default(),
            connections: 0,
            hung_up_before_an_ack: 0,
            lines,
            send,
            tally: Tally::default(),
        }
    }

    /// Counts what the connections have read so far.
    fn drain(&mut self) {
        while let Ok(seen) = self.lines.try_recv() {
            self.tally.take(seen);
        }
    }

    /// Connects to the host's socket (waiting up to `limit` for it to
    /// accept) and (re)sends every message of `0..released` still open.
    async fn connect(
        &mut self,
        home: &Home,
        released: usize,
        plan: Plan,
        limit: Duration,
    ) -> Option<Connection> {
        self.drain();
        let socket = home.path().join("data/talon.sock");
        let mut client =
            socket_client::try_connect_with(&socket, limit, self.memory.clone()).await?;
        let mut batch = String::new();
        for n in self.tally.open(released) {
            batch.push_str(&socket_client::message_line(
                &chat_of(n),
                &format!("m{n}"),
                &format!("m{n}"),
            ));
        }
        // A host that dies meanwhile is fine: what did not get in is resent.
        let _ = client.send_raw(batch.as_bytes()).await;
        let number = self.connections;
        self.connections += 1;
        let task = tokio::spawn(read_lines(client, number, plan, self.send.clone()));
        Some(Connection { task })
    }

    /// A connection has ended: keep what it remembered.
    fn ended(&mut self, ended: Ended) {
        self.memory = ended.memory;
        self.hung_up_before_an_ack += usize::from(ended.before_an_ack);
        self.drain();
    }
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
async fn finish(host: RunningHost, client: &mut Client) -> std::process::ExitStatus {
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
    if let Some(Connection { task }) = connection {
        // The process is gone, so its end of the socket is closed.
        let ended = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the connection closed with the host")
            .expect("the client task");
        client.ended(ended);
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

    let mut client = Client::new();
    let mut early_kills = 0;
    for round in 0..KILLS {
        // Messages arrive over the rounds; each connection resends what is
        // open.
        let released = (round + 1) * MESSAGES / (KILLS + 1);
        let child = spawn_host(&env, &home, round);
        let connections_before = client.connections;
        let replies_before = client.tally.replies;
        client.drain();
        let open_before = client.tally.open(released).len();
        // One kill in five lands early, in startup recovery (removing
        // orphans, requeueing, redelivering), connected or not yet.
        let early = rng.between(0, 4) == 0;
        let plan = Plan::random(&mut rng);
        let (mut connection, delay, kill_at) = if early {
            early_kills += 1;
            let delay = Duration::from_millis(rng.between(10, 600));
            let kill_at = tokio::time::Instant::now() + delay;
            let connection = client.connect(&home, released, plan, delay).await;
            (connection, delay, kill_at)
        } else {
            let Some(connection) = client.connect(&home, released, plan, CONNECT_LIMIT).await
            else {
                signal(&child, libc::SIGKILL);
                panic!(
                    "round {round}: the host did not accept on its socket: {}",
                    host_stderr(&home, round)
                );
            };
            let delay = Duration::from_millis(rng.between(50, 1500));
            (Some(connection), delay, tokio::time::Instant::now() + delay)
        };
        // Until the kill, the client hangs up and reconnects as its plans say.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(kill_at) => break,
                ended = Connection::ended(&mut connection) => {
                    client.ended(ended);
                    let left = kill_at.saturating_duration_since(tokio::time::Instant::now());
                    let plan = Plan::random(&mut rng);
                    connection = client.connect(&home, released, plan, left).await;
                }
            }
        }
        signal(&child, libc::SIGKILL);
        let connected = connection.is_some();
        finish(RunningHost { child, connection }, &mut client).await;
        let moment = match (early, connected) {
            (true, true) => "start (connected)".to_string(),
            (true, false) => "start (not yet accepting)".to_string(),
            (false, _) => format!("sending {open_before} messages"),
        };
        eprintln!(
            "round {round:2}: killed {:4} ms after {moment}, {:2} connections, {:3} new replies, {:3} of {released} answered",
            delay.as_millis(),
            client.connections - connections_before,
            client.tally.replies - replies_before,
            released - client.tally.open(released).len()
        );
    }

    // The last host runs until every message has been answered and every
    // reply acknowledged, the client still hanging up now and then.
    let child = spawn_host(&env, &home, KILLS);
    let last_round_connections = client.connections;
    let plan = Plan::random(&mut rng);
    let Some(mut connection) = client.connect(&home, MESSAGES, plan, CONNECT_LIMIT).await else {
        signal(&child, libc::SIGKILL);
        panic!(
            "the last host did not accept on its socket: {}",
            host_stderr(&home, KILLS)
        );
    };
    let store = talon::store::Store::open(&home.paths().db()).expect("open the store");
    let deadline = tokio::time::Instant::now() + FINAL_LIMIT;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            ended = &mut connection.task => {
                client.ended(ended.expect("the client task"));
                let plan = Plan::random(&mut rng);
                let Some(next) = client.connect(&home, MESSAGES, plan, CONNECT_LIMIT).await else {
                    signal(&child, libc::SIGKILL);
                    panic!("the last host stopped accepting: {}", host_stderr(&home, KILLS));
                };
                connection = next;
            }
            _ = poll.tick() => {
                client.drain();
                let owed = store.unsent_outbox().expect("read the outbox");
                if client.tally.open(MESSAGES).is_empty() && owed.is_empty() {
                    break;
                }
            }
        }
    }
    signal(&child, libc::SIGTERM);
    let status = finish(
        RunningHost {
            child,
            connection: Some(connection),
        },
        &mut client,
    )
    .await;

    let tally = &client.tally;
    let missing = tally.open(MESSAGES);
    let twice = tally.answered_more_than_once();
    let repeated_rows: Vec<(i64, u32)> = tally
        .copies
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(id, c)| (*id, *c))
        .collect();
    let duplicates = tally.repeated_copies();
    // Every connection after the first is a reconnect.
    let reconnects = client.connections.saturating_sub(1);
    let took = started.elapsed().as_secs_f64();
    let summary = format!(
        "messages: {MESSAGES}, replies: {}, duplicates (same outbox_id, deduped): {duplicates}, \
         kills: {KILLS}, reconnects: {reconnects}, took {took:.1} s",
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
        "seed {seed:#x}; {early_kills} of the kills during startup; {} connections to the last host; \
         {} hang-ups between a reply and its ack; model requests: {}; \
         rows written more than once (id, copies): {repeated_rows:?}; \
         messages in them: {twice:?}; failure notices: {:?}",
        client.connections - last_round_connections,
        client.hung_up_before_an_ack,
        model.request_count(),
        tally.notices,
    );

    assert!(
        missing.is_empty(),
        "{} messages were never answered: {missing:?}; notices: {:?}; last host: {}",
        missing.len(),
        tally.notices,
        host_stderr(&home, KILLS)
    );
    assert!(status.success(), "the last host exited with {status:?}");
    // A reply comes again on each connection until one acks it, so repeats
    // follow the reconnects; what must hold is that a repeat is the same
    // row: never two agent runs for one message, never one row twice on
    // one connection, and the client's dedupe agrees.
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
        tally.twice_on_one_connection.is_empty(),
        "rows written twice to one connection (connection, id): {:?}",
        tally.twice_on_one_connection
    );
    assert!(
        tally.misjudged.is_empty(),
        "the client's dedupe disagreed: {:?}",
        tally.misjudged
    );
    assert!(store.integrity_ok().expect("integrity check"));
    let owed = store.unsent_outbox().expect("read the outbox");
    assert!(owed.is_empty(), "replies never acknowledged: {owed:?}");
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
