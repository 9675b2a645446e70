//! Soak (issue 14): the real daemon (`talon run`, a child process) with the
//! socket channel, real agent containers and the fake model, under steady
//! traffic for a while, watching its memory and file descriptors.
//!
//! * `SOAK_GROUPS` socket groups (default 10), one client connection each,
//!   share `SOAK_RATE` messages per second (default 20, in total) for
//!   `SOAK_SECS` seconds (default 60). Each message has a unique id, the
//!   fake model answers with the ids of the messages of its batch, and every
//!   message must get its reply (checked at the end: a lost message fails
//!   the bench).
//! * `SOAK_PLATFORMS=1` also connects the fake Slack and Discord and gives
//!   each one group in the same rotation.
//! * `SOAK_IDLE_SECS` (default 3): how long the started daemon idles, with
//!   its clients connected, before the traffic (its start-up code is paged
//!   out at once and again a minute in: 70 s sees both).
//! * `SOAK_SLOTS` is `max_concurrent_containers` (default: one per group,
//!   so every container stays warm; fewer makes containers come and go).
//! * Every second: the daemon's VmRSS, RssAnon and RssFile (from
//!   `/proc/<pid>/status`) and its open fds (`/proc/<pid>/fd`). Printed: the
//!   idle RSS after start (before any traffic), then for the traffic phase
//!   start, peak, end and slope per minute (least squares, after the first
//!   20% of samples as warm-up).
//!
//! Run: `cargo bench --bench soak` (e.g. `SOAK_SECS=20 cargo bench --bench
//! soak`). Needs the Docker engine; the test image is built as for the tests.
//! A table per minute follows: RSS, fds and the largest model request, whose
//! size is the conversations' (each request carries its group's transcript,
//! compacted by the runner past its budget).

mod common;
#[path = "../tests/support/fake_discord.rs"]
mod fake_discord;
#[path = "../tests/support/fake_slack.rs"]
mod fake_slack;
#[path = "../tests/support/socket_client.rs"]
mod socket_client;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use common::{env_count, ms, percentile};
use regex::Regex;
use serde_json::Value;
use socket_client::{ack_line, message_line};
use support::fake_anthropic::{FakeAnthropic, Reply};
use support::inproc::group;
use support::{collect_stderr, docker_with_image, host_env, last_user_text, spawn_daemon, Home};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

const START_LIMIT: Duration = Duration::from_secs(120);
/// How long replies may still come after the traffic stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// Where the samples' and the request sizes' clocks start.
static T0: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The largest model request body (bytes) seen in each minute since [`T0`]:
/// what the daemon holds per call grows with the conversations.
static LARGEST_REQUEST: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn note_request(body: &Value) {
    let size = serde_json::to_vec(body).map_or(0, |b| b.len());
    let minute = (T0.elapsed().as_secs() / 60) as usize;
    let mut largest = LARGEST_REQUEST.lock().unwrap();
    if largest.len() <= minute {
        largest.resize(minute + 1, 0);
    }
    largest[minute] = largest[minute].max(size);
}

/// A message id: `msg-<group>-<n>`; the model's answer lists them.
static ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"msg-\d+-\d+").unwrap());

struct Settings {
    secs: u64,
    groups: usize,
    rate: f64,
    platforms: bool,
    slots: Option<usize>,
    /// Idle time sampled before the traffic starts.
    idle_secs: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let rate = std::env::var("SOAK_RATE")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|r| *r > 0.0)
            .unwrap_or(20.0);
        Settings {
            secs: env_count("SOAK_SECS", 60) as u64,
            groups: env_count("SOAK_GROUPS", 10).max(1),
            rate,
            platforms: std::env::var("SOAK_PLATFORMS").is_ok_and(|v| v == "1" || v == "true"),
            slots: std::env::var("SOAK_SLOTS")
                .ok()
                .and_then(|v| v.parse().ok()),
            idle_secs: env_count("SOAK_IDLE_SECS", 3) as u64,
        }
    }
}

fn main() {
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(soak(settings));
}

// ---------------------------------------------------------------- samples

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Traffic,
    Drain,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Seconds since the sampler started.
    at: f64,
    phase: Phase,
    rss_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    fds: u64,
}

/// `VmRSS`, `RssAnon`, `RssFile` (kB) of a process, from its status file.
fn memory_of(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("VmRSS")?, field("RssAnon")?, field("RssFile")?))
}

fn fds_of(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Samples `pid` every second (from [`T0`]), tagged with the phase at the
/// time, until `stop` is set.
fn sampler(
    pid: u32,
    phase: Arc<Mutex<Phase>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Sample>> {
    std::thread::spawn(move || {
        let started = *T0;
        let mut samples = Vec::new();
        let mut next = started;
        while !stop.load(Ordering::SeqCst) {
            if let (Some((rss_kb, anon_kb, file_kb)), Some(fds)) = (memory_of(pid), fds_of(pid)) {
                samples.push(Sample {
                    at: started.elapsed().as_secs_f64(),
                    phase: *phase.lock().unwrap(),
                    rss_kb,
                    anon_kb,
                    file_kb,
                    fds,
                });
            }
            next += Duration::from_secs(1);
            // Short sleeps, so a stop is seen at once.
            while Instant::now() < next && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        samples
    })
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in points {
        num += (x - mean_x) * (y - mean_y);
        den += (x - mean_x) * (x - mean_x);
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// start, peak, end and slope per minute (after the first 20% of samples)
/// of `value` over `samples`.
fn summary(samples: &[Sample], value: impl Fn(&Sample) -> f64) -> (f64, f64, f64, f64) {
    let start = samples.first().map_or(0.0, &value);
    let end = samples.last().map_or(0.0, &value);
    let peak = samples.iter().map(&value).fold(f64::MIN, f64::max);
    let warm_up = samples.len() / 5;
    let points: Vec<(f64, f64)> = samples[warm_up..]
        .iter()
        .map(|s| (s.at / 60.0, value(s)))
        .collect();
    (start, peak, end, slope(&points))
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

// ---------------------------------------------------------------- replies

/// Which messages were sent and which answered.
#[derive(Default)]
struct Tracker {
    pending: HashMap<String, Instant>,
    answered: HashSet<String>,
    sent: usize,
    duplicates: usize,
    unknown: usize,
    /// Replies of kind `notice` (a failure told to the chat) and `error`
    /// lines from the socket.
    notices: Vec<String>,
    latencies: Vec<Duration>,
}

impl Tracker {
    fn sent(&mut self, id: String) {
        self.sent += 1;
        self.pending.insert(id, Instant::now());
    }

    /// A reply's text: every id in it is answered.
    fn reply(&mut self, text: &str) {
        for id in ID.find_iter(text).map(|m| m.as_str()) {
            if let Some(sent) = self.pending.remove(id) {
                self.latencies.push(sent.elapsed());
                self.answered.insert(id.to_string());
            } else if self.answered.contains(id) {
                self.duplicates += 1;
            } else {
                self.unknown += 1;
            }
        }
    }
}

type Shared = Arc<Mutex<Tracker>>;

/// Connects to the socket (retrying while the daemon starts): a writer task
/// fed by the returned sender, and a reader that acks and tracks the
/// replies of `chat` (every client is written every socket reply; each one
/// acknowledges only its own chat's, as a per-chat bridge would).
async fn socket_client(
    path: &Path,
    chat: String,
    tracker: Shared,
) -> mpsc::UnboundedSender<String> {
    let deadline = Instant::now() + START_LIMIT;
    let stream = loop {
        match UnixStream::connect(path).await {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to the socket: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let (reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if writer.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let acks = tx.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        let mut seen = HashSet::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let value: Value = serde_json::from_str(&line).expect("a JSON line from talon");
            match value["type"].as_str() {
                Some("reply") if value["chat"] == chat.as_str() => {
                    let id = value["outbox_id"].as_i64().expect("an outbox id");
                    let _ = acks.send(ack_line(id));
                    if !seen.insert(id) {
                        continue;
                    }
                    let text = value["text"].as_str().unwrap_or_default();
                    let mut tracker = tracker.lock().unwrap();
                    if value["kind"] == "notice" {
                        tracker.notices.push(text.to_string());
                    }
                    tracker.reply(text);
                }
                Some("error") => tracker.lock().unwrap().notices.push(line),
                _ => {}
            }
        }
    });
    tx
}

/// Where a group's messages go.
enum Sink {
    Socket {
        chat: String,
        tx: mpsc::UnboundedSender<String>,
    },
    Slack(Arc<fake_slack::FakeSlack>),
    Discord(Arc<fake_discord::FakeDiscord>),
}

impl Sink {
    fn send(&self, n: usize, id: &str) {
        match self {
            Sink::Socket { chat, tx } => {
                tx.send(message_line(chat, id, id)).expect("socket writer");
            }
            Sink::Slack(slack) => {
                let ts = format!("1700000000.{n:06}");
                let event = fake_slack::message_event("C1", "U0ALICE", id, &ts, None);
                assert!(slack.send_events_api(&format!("env-{n}"), event), "slack");
            }
            Sink::Discord(discord) => {
                discord.send_message_create(fake_discord::MessageSpec {
                    channel_id: "200".into(),
                    guild_id: Some("300".into()),
                    author_id: "400".into(),
                    author_name: "ann".into(),
                    content: id.to_string(),
                    ..Default::default()
                });
            }
        }
    }
}

/// Kills the daemon (and its containers) if the bench ends early.
struct DaemonGuard {
    child: Option<std::process::Child>,
    home: std::path::PathBuf,
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            for name in support::talon_containers(&self.home) {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", &name])
                    .output();
            }
        }
    }
}

// ---------------------------------------------------------------- the soak

async fn soak(settings: Settings) {
    let Some(docker) = docker_with_image().await else {
        eprintln!("no Docker engine: nothing to soak");
        return;
    };
    drop(docker);
    LazyLock::force(&T0);
    let model = FakeAnthropic::start_with(|body| {
        note_request(body);
        let text = last_user_text(body);
        let ids: Vec<&str> = ID.find_iter(&text).map(|m| m.as_str()).collect();
        let mut reply = format!("ack {}", ids.join(" "));
        // A real model stops at max_tokens (about 4 chars a token): the
        // runner's compaction summary, which names every id of the
        // transcript, stays as bounded as a real one.
        let cap = body["max_tokens"].as_u64().unwrap_or(4096) as usize * 4;
        if let Some((cut, _)) = reply.char_indices().nth(cap) {
            reply.truncate(cut);
        }
        Reply::text(reply)
    })
    .await;
    model.stop_recording();

    let home = Home::new();
    let paths = home.paths();
    paths.ensure().expect("home");
    let store = talon::store::Store::open(&paths.db()).expect("store");
    let mut chats: Vec<String> = (0..settings.groups)
        .map(|g| format!("sock:soak-{g}"))
        .collect();
    if settings.platforms {
        chats.push("slack:C1".into());
        chats.push("dc:200".into());
    }
    for (g, chat) in chats.iter().enumerate() {
        store
            .register_group(&group(chat, &format!("soak-{g}"), false, false))
            .expect("register a group");
    }
    drop(store);

    let mut env = host_env(home.path(), &model.base_url);
    let slots = settings.slots.unwrap_or(chats.len()).max(1);
    env.push(("TALON_CHANNELS_SOCKET".into(), "true".into()));
    env.push((
        "TALON_QUEUE_MAX_CONCURRENT_CONTAINERS".into(),
        slots.to_string(),
    ));
    let platforms = if settings.platforms {
        let slack = Arc::new(fake_slack::FakeSlack::start(Default::default()).await);
        let discord = Arc::new(
            fake_discord::FakeDiscord::start(fake_discord::FakeDiscordConfig {
                // Heartbeats within even a short soak.
                heartbeat_interval_ms: 5_000,
                ..Default::default()
            })
            .await,
        );
        for (key, value) in [
            ("SLACK_BOT_TOKEN", "xoxb-test".to_string()),
            ("SLACK_APP_TOKEN", "xapp-test".to_string()),
            ("TALON_CHANNELS_SLACK_API_URL", slack.api_url()),
            ("DISCORD_BOT_TOKEN", "fake-discord-token".to_string()),
            ("TALON_CHANNELS_DISCORD_API_URL", discord.proxy_url()),
        ] {
            env.push((key.into(), value));
        }
        Some((slack, discord))
    } else {
        None
    };

    let mut child = spawn_daemon(&env);
    let pid = child.id();
    let stderr = collect_stderr(&mut child);
    let mut guard = DaemonGuard {
        child: Some(child),
        home: home.path().to_path_buf(),
    };
    let said = || stderr.lock().unwrap().join("\n");
    let deadline = Instant::now() + START_LIMIT;
    while !said().contains("talon: running") {
        assert!(
            Instant::now() < deadline,
            "the daemon did not start:\n{}",
            said()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let phase = Arc::new(Mutex::new(Phase::Idle));
    let stop = Arc::new(AtomicBool::new(false));
    let samples = sampler(pid, phase.clone(), stop.clone());

    let tracker: Shared = Arc::default();
    let socket = home.path().join("data/talon.sock");
    let mut sinks = Vec::new();
    for chat in chats.iter().filter(|c| c.starts_with("sock:")) {
        let tx = socket_client(&socket, chat.clone(), tracker.clone()).await;
        sinks.push(Sink::Socket {
            chat: chat.clone(),
            tx,
        });
    }
    let mut watchers = Vec::new();
    if let Some((slack, discord)) = &platforms {
        assert!(
            slack.wait_connections(1, START_LIMIT).await,
            "slack connected"
        );
        assert!(
            discord.wait_readies(1, START_LIMIT).await,
            "discord identified"
        );
        sinks.push(Sink::Slack(slack.clone()));
        sinks.push(Sink::Discord(discord.clone()));
        // The platforms' replies, as they are posted.
        let (slack, discord, tracker) = (slack.clone(), discord.clone(), tracker.clone());
        watchers.push(tokio::spawn(async move {
            let (mut posts, mut created) = (0, 0);
            loop {
                let new_posts = slack.posts();
                let new_created = discord.created();
                {
                    let mut tracker = tracker.lock().unwrap();
                    for post in &new_posts[posts..] {
                        tracker.reply(&post.text);
                    }
                    for message in &new_created[created..] {
                        tracker.reply(&message.content);
                    }
                }
                (posts, created) = (new_posts.len(), new_created.len());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    println!(
        "{}",
        said()
            .lines()
            .find(|l| l.contains("talon: running"))
            .unwrap_or("")
    );

    // Idle: the daemon started, clients connected, nothing sent yet.
    tokio::time::sleep(Duration::from_secs(settings.idle_secs)).await;
    *phase.lock().unwrap() = Phase::Traffic;

    let traffic_started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.rate));
    let total = Duration::from_secs(settings.secs);
    let mut n = 0usize;
    while traffic_started.elapsed() < total {
        tick.tick().await;
        let g = n % sinks.len();
        let id = format!("msg-{g}-{n}");
        tracker.lock().unwrap().sent(id.clone());
        sinks[g].send(n, &id);
        n += 1;
    }
    let traffic_secs = traffic_started.elapsed().as_secs_f64();
    *phase.lock().unwrap() = Phase::Drain;
    let drain_started = Instant::now();
    while !tracker.lock().unwrap().pending.is_empty() && drain_started.elapsed() < DRAIN_LIMIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_in = drain_started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let samples = samples.join().expect("sampler");
    for watcher in watchers {
        watcher.abort();
    }

    let alive = memory_of(pid).is_some();
    // A clean stop, as a user's would be.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut child = guard.child.take().expect("the daemon");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("wait")
        .expect("the daemon's exit");
    let left = support::talon_containers(home.path());

    // ------------------------------------------------------------ report
    let tracker = tracker.lock().unwrap();
    let mut latencies = tracker.latencies.clone();
    latencies.sort();
    println!(
        "soak: {} socket groups{}, {} container slots, {:.1} msg/s for {:.0} s",
        settings.groups,
        if settings.platforms {
            " + a Slack and a Discord group"
        } else {
            ""
        },
        slots,
        tracker.sent as f64 / traffic_secs,
        traffic_secs,
    );
    println!(
        "messages: sent {}, answered {}, lost {}, answered twice {}, unknown ids {}, notices/errors {}; \
         last reply {:.1} s after the traffic stopped",
        tracker.sent,
        tracker.answered.len(),
        tracker.pending.len(),
        tracker.duplicates,
        tracker.unknown,
        tracker.notices.len(),
        drained_in.as_secs_f64(),
    );
    if !latencies.is_empty() {
        println!(
            "reply latency: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().unwrap()),
        );
    }
    let idle: Vec<Sample> = samples
        .iter()
        .filter(|s| s.phase == Phase::Idle)
        .copied()
        .collect();
    let traffic: Vec<Sample> = samples
        .iter()
        .filter(|s| s.phase == Phase::Traffic)
        .copied()
        .collect();
    if let Some(idle) = idle.last() {
        println!(
            "idle after start: RSS {:.1} MB (anon {:.1}, file {:.1}), {} fds",
            mb(idle.rss_kb),
            mb(idle.anon_kb),
            mb(idle.file_kb),
            idle.fds
        );
    }
    println!(
        "under traffic ({} samples, slope after the first {}):",
        traffic.len(),
        traffic.len() / 5
    );
    for (name, value) in [
        (
            "RSS     ",
            (|s: &Sample| mb(s.rss_kb)) as fn(&Sample) -> f64,
        ),
        ("RssAnon ", |s: &Sample| mb(s.anon_kb)),
        ("RssFile ", |s: &Sample| mb(s.file_kb)),
    ] {
        let (start, peak, end, per_min) = summary(&traffic, value);
        println!(
            "  {name} start {start:7.1} MB  peak {peak:7.1} MB  end {end:7.1} MB  slope {per_min:+7.2} MB/min"
        );
    }
    let (start, peak, end, per_min) = summary(&traffic, |s| s.fds as f64);
    println!(
        "  fds      start {start:7.0}     peak {peak:7.0}     end {end:7.0}     slope {per_min:+7.2} /min"
    );
    println!("per minute: RSS / RssAnon at its end (MB), fds, largest model request (KB)");
    let largest = LARGEST_REQUEST.lock().unwrap().clone();
    for (minute, request) in largest.iter().enumerate() {
        let end = samples
            .iter()
            .take_while(|s| s.at < (minute + 1) as f64 * 60.0)
            .last();
        if let Some(s) = end {
            println!(
                "  {:3}  {:6.1} / {:6.1}  {:4}  {:7.1}",
                minute + 1,
                mb(s.rss_kb),
                mb(s.anon_kb),
                s.fds,
                *request as f64 / 1024.0
            );
        }
    }
    if let Some(last) = samples.last() {
        println!(
            "after the drain: RSS {:.1} MB, {} fds",
            mb(last.rss_kb),
            last.fds
        );
    }
    let logs = paths.logs();
    let present: Vec<&str> = ["talon.log", "talon.error.log", "routing-metrics.jsonl"]
        .into_iter()
        .filter(|name| logs.join(name).is_file())
        .collect();
    println!("logs/: {}", present.join(", "));
    for notice in tracker.notices.iter().take(5) {
        println!("notice: {notice}");
    }

    assert!(alive, "the daemon died during the soak:\n{}", said());
    assert!(
        tracker.pending.is_empty(),
        "{} messages got no reply within {DRAIN_LIMIT:?}, e.g. {:?}",
        tracker.pending.len(),
        tracker.pending.keys().take(5).collect::<Vec<_>>()
    );
    assert!(exit.success(), "the daemon's exit: {exit:?}\n{}", said());
    assert!(left.is_empty(), "containers left behind: {left:?}");
}
