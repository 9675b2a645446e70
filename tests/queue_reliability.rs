//! Queue reliability (SPEC §4, issue 4): rollback with and without prior
//! output, the stale-session retry, runner lines that are not protocol
//! messages, the global container limit and FIFO slots across groups — all
//! against the real engine, most with scripted shell runners that fail on
//! purpose — and the retry delays on tokio's paused clock with a fake engine.
//!
//! A scripted runner counts its turns in the group folder (which outlives
//! containers), so a script can fail on the first attempt and succeed on the
//! second, and the test can read every line the host sent it.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use serde_json::Value;
use support::fake_anthropic::{FakeAnthropic, Reply};
use support::inproc::*;
use support::*;
use talon::actors::group_queue::{queue_name, GroupQueue, GroupQueueArgs, GroupQueueMsg};
use talon::actors::router::RouterMsg;
use talon::actors::terminal::{TerminalOutput, TERMINAL_CHAT};
use talon::store::Store;

const LIMIT: Duration = Duration::from_secs(120);

/// How long a settled queue is watched for a retry that must not come
/// (ten retry bases of the tests that use it).
const NO_RETRY_WATCH: Duration = Duration::from_millis(500);

/// A successful end of turn.
const SUCCESS: &str = r#"printf '%s\n' '{"type":"result","status":"success","session_id":"s1","last_assistant_id":"a1","error":null,"error_kind":null}'"#;

/// Builds `tag`: the test image with a busybox shell runner that speaks the
/// wire protocol. For every turn (a start or a follow-up) it bumps the
/// attempt counter in the group folder, saves the turn's line there as
/// `turn-<n>.json`, then runs `on_turn` with `$n` set. The close sentinel
/// ends it with exit 0.
async fn scripted_runner(docker: &bollard::Docker, tag: &str, on_turn: &str) {
    let script = format!(
        r#"while IFS= read -r line; do
  case "$line" in
    *'"type":"start"'*|*'"type":"follow_up"'*)
      n=$(( $(cat /workspace/group/attempts 2>/dev/null || echo 0) + 1 ))
      echo "$n" > /workspace/group/attempts
      printf '%s\n' "$line" > "/workspace/group/turn-$n.json"
      {on_turn}
      ;;
    *'"type":"close"'*) exit 0 ;;
  esac
done"#
    );
    let entrypoint = serde_json::to_string(&["/bin/sh", "-c", &script]).expect("encode");
    derived_image(docker, tag, &format!("ENTRYPOINT {entrypoint}")).await;
}

/// How many turns a scripted runner of `folder` has begun.
fn attempts(home: &Path, folder: &str) -> u32 {
    let path = home.join("groups").join(folder).join("attempts");
    std::fs::read_to_string(&path)
        .map(|text| text.trim().parse().expect("a number"))
        .unwrap_or(0)
}

/// The line the host sent for turn `n` of `folder`'s scripted runner.
fn turn_line(home: &Path, folder: &str, n: u32) -> Value {
    let path = home
        .join("groups")
        .join(folder)
        .join(format!("turn-{n}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("turn {n} is not JSON ({e}): {text}"))
}

fn send(chat: &str, id: &str, text: &str) {
    router()
        .cast(RouterMsg::Inbound(message(chat, id, text)))
        .expect("router accepts");
}

fn seq_of(store: &Store, chat: &str, platform_id: &str) -> i64 {
    store
        .messages_after(chat, 0, 1000)
        .expect("messages")
        .iter()
        .find(|m| m.platform_msg_id == platform_id)
        .unwrap_or_else(|| panic!("message {platform_id} not stored"))
        .seq
}

async fn queue_status(folder: &str) -> Value {
    let queue: ActorRef<GroupQueueMsg> = ractor::registry::where_is(queue_name(folder))
        .unwrap_or_else(|| panic!("queue {folder} running"))
        .into();
    match ractor::call!(queue, GroupQueueMsg::Inspect) {
        Ok(status) => status,
        Err(e) => panic!("queue {folder} did not answer: {e}"),
    }
}

/// Waits (bounded) until the queue has nothing in flight, no retry pending
/// and nothing after its cursor; returns its last status.
async fn wait_until_settled(folder: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = queue_status(folder).await;
        let settled = status["in_flight"].is_null()
            && status["retry_pending"] == false
            && status["waiting_for_slot"] == false
            && status["pending_messages"] == 0;
        if settled {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "queue {folder} did not settle: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_no_more_replies(host: &mut TestHost) {
    if let Ok(extra) = host.replies.try_recv() {
        panic!("an extra message reached the chat: {extra:?}");
    }
}

/// The largest number of `[start, end)` intervals (ms) open at once.
fn max_overlap(intervals: &[(i64, i64)]) -> usize {
    let mut edges: Vec<(i64, i32)> = intervals
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // At equal times an end comes first: touching intervals do not overlap.
    edges.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        open += delta;
        most = most.max(open);
    }
    most as usize
}

/// Each group's container runs as `[started, started + duration_ms)`.
fn container_intervals(home: &Path, folders: &[String]) -> Vec<(i64, i64)> {
    folders
        .iter()
        .flat_map(|folder| run_logs(home, folder))
        .map(|log| {
            let started = log_field(&log, "started").expect("started");
            let start = chrono::DateTime::parse_from_rfc3339(started)
                .unwrap_or_else(|e| panic!("started {started:?}: {e}"))
                .timestamp_millis();
            let ran: i64 = log_field(&log, "duration_ms")
                .expect("duration_ms")
                .parse()
                .expect("a number");
            (start, start + ran)
        })
        .collect()
}

/// Samples `docker ps` for the home's containers until stopped; the most seen.
struct ContainerSampler {
    stop: Arc<AtomicBool>,
    most: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl ContainerSampler {
    fn start(home: &Path) -> ContainerSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicUsize::new(0));
        let (stop_flag, seen, home) = (stop.clone(), most.clone(), home.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::SeqCst) {
                seen.fetch_max(talon_containers(&home).len(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        ContainerSampler { stop, most, thread }
    }

    fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("sampler thread");
        self.most.load(Ordering::SeqCst)
    }
}

/// Waits (bounded) until the home has no container left.
async fn wait_for_no_containers(home: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !talon_containers(home).is_empty() {
        assert!(Instant::now() < deadline, "containers did not go away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- rollback ---------------------------------------------------------------

/// Attempt 1 fails (temporary) before any output; later attempts answer.
/// With `exit_after_error` the runner also exits after failing (exit 1).
fn fail_once_then_answer(exit_after_error: bool) -> String {
    let exit = if exit_after_error { "exit 1" } else { ":" };
    format!(
        r#"if [ "$n" = 1 ]; then
        printf '%s\n' '{{"type":"result","status":"error","session_id":null,"last_assistant_id":null,"error":"the model is overloaded","error_kind":"temporary"}}'
        {exit}
      else
        printf '{{"type":"output","text":"answer from attempt %s"}}\n' "$n"
        {SUCCESS}
      fi"#
    )
}

async fn a_failure_before_output_rolls_back_and_the_retry_answers_once(exit_after_error: bool) {
    let _one = ONE_HOST.lock().await;
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let tag = if exit_after_error {
        "talon-agent:test-qr-fail-exit"
    } else {
        "talon-agent:test-qr-fail-stay"
    };
    scripted_runner(&docker, tag, &fail_once_then_answer(exit_after_error)).await;
    let model = FakeAnthropic::start(vec![]).await;
    let overrides = [
        ("TALON_CONTAINER_IMAGE", tag),
        ("TALON_QUEUE_RETRY_BASE", "50ms"),
        ("TALON_CONTAINER_IDLE_TIMEOUT", "5s"),
    ];
    let main = group(TERMINAL_CHAT, "main", true, false);
    let mut host = start_host_with(docker, &model, &[main], &overrides).await;
    let home = host.home.path().to_path_buf();

    send(TERMINAL_CHAT, "m1", "please answer");
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("answer from attempt 2".into())
    );
    let status = wait_until_settled("main").await;
    assert_eq!(status["failures"], 0, "{status}");
    assert_eq!(
        host.store.cursor(TERMINAL_CHAT).unwrap(),
        seq_of(&host.store, TERMINAL_CHAT, "m1")
    );
    tokio::time::sleep(NO_RETRY_WATCH).await;
    assert_no_more_replies(&mut host);
    assert_eq!(attempts(&home, "main"), 2);
    assert!(host.store.failed_batches(10).unwrap().is_empty());

    // The retry carried the same batch: the cursor never moved past it.
    let first = turn_line(&home, "main", 1);
    let second = turn_line(&home, "main", 2);
    assert_eq!(first["type"], "start");
    // A runner that stayed up gets the retry piped in; one that exited, a new start.
    let expected_retry = if exit_after_error {
        "start"
    } else {
        "follow_up"
    };
    assert_eq!(second["type"], expected_retry, "{second}");
    assert_eq!(first["prompt"], second["prompt"]);
    assert!(first["prompt"]
        .as_str()
        .is_some_and(|p| p.contains("please answer")));
    // Run logs are written as containers stop; the home must outlive the host.
    let _home = host.stop_keeping_home().await;

    let logs = run_logs(&home, "main");
    if exit_after_error {
        assert_eq!(logs.len(), 2, "{logs:?}");
        assert_eq!(log_field(&logs[0], "exit_code"), Some("1"), "{}", logs[0]);
        assert_eq!(log_field(&logs[1], "exit_code"), Some("0"), "{}", logs[1]);
    } else {
        assert_eq!(logs.len(), 1, "{logs:?}");
    }
    assert_eq!(
        model.request_count(),
        0,
        "scripted runners never call the model"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_before_output_is_retried_in_the_warm_container_and_answered_once() {
    a_failure_before_output_rolls_back_and_the_retry_answers_once(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_that_fails_and_exits_before_output_is_retried_in_a_new_container() {
    a_failure_before_output_rolls_back_and_the_retry_answers_once(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_after_output_keeps_the_cursor_and_is_never_retried() {
    let _one = ONE_HOST.lock().await;
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let tag = "talon-agent:test-qr-output-then-error";
    let on_turn = r#"printf '{"type":"output","text":"partial answer %s"}\n' "$n"
      printf '%s\n' '{"type":"result","status":"error","session_id":"s1","last_assistant_id":"a1","error":"the tool crashed","error_kind":"temporary"}'"#;
    scripted_runner(&docker, tag, on_turn).await;
    let model = FakeAnthropic::start(vec![]).await;
    let overrides = [
        ("TALON_CONTAINER_IMAGE", tag),
        ("TALON_QUEUE_RETRY_BASE", "50ms"),
        ("TALON_CONTAINER_IDLE_TIMEOUT", "5s"),
    ];
    let main = group(TERMINAL_CHAT, "main", true, false);
    let mut host = start_host_with(docker, &model, &[main], &overrides).await;
    let home = host.home.path().to_path_buf();

    send(TERMINAL_CHAT, "m1", "do the thing");
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("partial answer 1".into())
    );
    let status = wait_until_settled("main").await;
    assert_eq!(status["failures"], 0, "{status}");
    assert_eq!(status["retry_pending"], false, "{status}");
    let first_seq = seq_of(&host.store, TERMINAL_CHAT, "m1");
    assert_eq!(host.store.cursor(TERMINAL_CHAT).unwrap(), first_seq);
    tokio::time::sleep(NO_RETRY_WATCH).await;
    assert_eq!(
        attempts(&home, "main"),
        1,
        "a batch with output was retried"
    );
    assert_no_more_replies(&mut host);
    assert!(host.store.failed_batches(10).unwrap().is_empty());

    // The queue is not stuck: the next message is the next batch, alone.
    send(TERMINAL_CHAT, "m2", "and again");
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("partial answer 2".into())
    );
    wait_until_settled("main").await;
    assert_eq!(
        host.store.cursor(TERMINAL_CHAT).unwrap(),
        seq_of(&host.store, TERMINAL_CHAT, "m2")
    );
    let second = turn_line(&home, "main", 2);
    let prompt = second["prompt"].as_str().unwrap_or_default();
    assert!(prompt.contains("and again"), "{second}");
    assert!(!prompt.contains("do the thing"), "answered twice: {second}");
    assert_no_more_replies(&mut host);
    host.stop().await;
}

// --- stale session ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_session_is_cleared_and_retried_at_once_with_a_fresh_session() {
    let _one = ONE_HOST.lock().await;
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let tag = "talon-agent:test-qr-stale-session";
    // The first turn fails the way Claude Code does when a transcript is gone.
    let on_turn = r#"if [ "$n" = 1 ]; then
        printf '%s\n' '{"type":"result","status":"error","session_id":null,"last_assistant_id":null,"error":"No conversation found with session ID abc","error_kind":null}'
      else
        printf '%s\n' '{"type":"output","text":"fresh start"}'
        printf '%s\n' '{"type":"result","status":"success","session_id":"s2","last_assistant_id":"a2","error":null,"error_kind":null}'
      fi"#;
    scripted_runner(&docker, tag, on_turn).await;
    let model = FakeAnthropic::start(vec![]).await;
    // An ordinary retry would wait 30 s: the test only passes without one.
    let overrides = [
        ("TALON_CONTAINER_IMAGE", tag),
        ("TALON_QUEUE_RETRY_BASE", "30s"),
        ("TALON_CONTAINER_IDLE_TIMEOUT", "5s"),
    ];
    let main = group(TERMINAL_CHAT, "main", true, false);
    let mut host = start_host_with(docker, &model, &[main], &overrides).await;
    let home = host.home.path().to_path_buf();
    host.store
        .set_session("main", "abc", Some("a-old"))
        .unwrap();

    let started = Instant::now();
    send(TERMINAL_CHAT, "m1", "remember me?");
    let reply = tokio::time::timeout(Duration::from_secs(20), host.next_reply())
        .await
        .expect("the fresh retry came at once, not after the 30 s retry delay");
    assert_eq!(reply, TerminalOutput::Reply("fresh start".into()));
    assert!(started.elapsed() < Duration::from_secs(20));
    let status = wait_until_settled("main").await;
    assert_eq!(
        status["failures"], 0,
        "a stale session spent a retry: {status}"
    );

    let first = turn_line(&home, "main", 1);
    assert_eq!(first["type"], "start");
    assert_eq!(first["session_id"], "abc", "{first}");
    assert_eq!(first["resume_at"], "a-old", "{first}");
    let second = turn_line(&home, "main", 2);
    assert_eq!(
        second["type"], "start",
        "the fresh session needs a new container"
    );
    assert!(second["session_id"].is_null(), "{second}");
    assert!(second["resume_at"].is_null(), "{second}");
    assert_eq!(first["prompt"], second["prompt"]);

    let session = host.store.session("main").unwrap().expect("a session");
    assert_eq!(session.session_id, "s2");
    assert_eq!(session.last_assistant_id.as_deref(), Some("a2"));
    assert_eq!(
        host.store.cursor(TERMINAL_CHAT).unwrap(),
        seq_of(&host.store, TERMINAL_CHAT, "m1")
    );
    assert_no_more_replies(&mut host);
    // Run logs are written as containers stop; the home must outlive the host.
    let _home = host.stop_keeping_home().await;
    assert_eq!(attempts(&home, "main"), 2);
    assert_eq!(run_logs(&home, "main").len(), 2);
}

// --- garbage from the runner ---------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn runner_lines_that_are_not_protocol_messages_are_logged_and_skipped() {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let tag = "talon-agent:test-qr-garbage-lines";
    let on_turn = format!(
        r#"echo 'not json {{'
      printf '%s\n' '{{"type":"bogus","x":1}}'
      printf '%s\n' '{{"type":"output","text":"still here"}}'
      {SUCCESS}"#
    );
    scripted_runner(&docker, tag, &on_turn).await;
    let model = FakeAnthropic::start(vec![]).await;
    let home = Home::new();
    let mut env = host_env(home.path(), &model.base_url);
    env.push(("TALON_CONTAINER_IMAGE".into(), tag.into()));
    let output = tokio::task::spawn_blocking(move || piped_chat(&env, b"hello\n", LIMIT))
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "still here\n");

    let logs = all_text_under(&home.path().join("logs"));
    for skipped in ["not json {", "bogus"] {
        let logged = logs
            .lines()
            .any(|l| l.contains("not a protocol message") && l.contains(skipped));
        assert!(logged, "{skipped:?} was not logged as skipped:\n{logs}");
    }
    assert_eq!(attempts(home.path(), "main"), 1);
}

fn all_text_under(dir: &Path) -> String {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

// --- the global limit and FIFO slots ------------------------------------------------

const MODEL_DELAY: Duration = Duration::from_secs(1);

/// A model that answers `reply to: <text>` after `delay_for(text)`, and
/// records when each request arrived and for which text.
async fn timed_model(
    delay_for: impl Fn(&str) -> Duration + Send + Sync + 'static,
) -> (FakeAnthropic, Arc<Mutex<Vec<(Instant, String)>>>) {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    let model = FakeAnthropic::start_with(move |body| {
        let text = last_message_text(&last_user_text(body));
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Instant::now(), text.clone()));
        Reply::delayed(delay_for(&text), Reply::text(format!("reply to: {text}")))
    })
    .await;
    (model, arrivals)
}

#[tokio::test(flavor = "multi_thread")]
async fn more_groups_than_slots_never_run_more_containers_than_the_limit() {
    let _one = ONE_HOST.lock().await;
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let (model, arrivals) = timed_model(|_| MODEL_DELAY).await;
    let folders: Vec<String> = (1..=5).map(|i| format!("g{i}")).collect();
    let groups: Vec<_> = folders
        .iter()
        .map(|f| group(&format!("term:{f}"), f, false, false))
        .collect();
    let overrides = [
        ("TALON_QUEUE_MAX_CONCURRENT_CONTAINERS", "2"),
        ("TALON_CONTAINER_IDLE_TIMEOUT", "200ms"),
    ];
    let mut host = start_host_with(docker, &model, &groups, &overrides).await;
    let home = host.home.path().to_path_buf();
    let sampler = ContainerSampler::start(&home);

    for folder in &folders {
        send(&format!("term:{folder}"), "m1", &format!("hello {folder}"));
    }
    let mut replies = Vec::new();
    for _ in &folders {
        replies.push(host.next_reply().await);
    }
    replies.sort_by_key(|r| format!("{r:?}"));
    let expected: Vec<_> = folders
        .iter()
        .map(|f| TerminalOutput::Reply(format!("reply to: hello {f}")))
        .collect();
    assert_eq!(replies, expected);
    for folder in &folders {
        wait_until_settled(folder).await;
    }
    wait_for_no_containers(&home).await;
    let most_seen = sampler.finish();
    assert_no_more_replies(&mut host);

    // Model calls: each lasted MODEL_DELAY from its arrival.
    let origin = Instant::now();
    let calls: Vec<(i64, i64)> = arrivals
        .lock()
        .unwrap()
        .iter()
        .map(|(at, _)| {
            let start = -(origin.duration_since(*at).as_millis() as i64);
            (start, start + MODEL_DELAY.as_millis() as i64)
        })
        .collect();
    assert_eq!(calls.len(), 5);
    // Two at once: the limit is used, and never exceeded.
    assert_eq!(max_overlap(&calls), 2, "model calls: {calls:?}");
    let containers = container_intervals(&home, &folders);
    assert_eq!(containers.len(), 5, "one run per group");
    assert!(
        max_overlap(&containers) <= 2,
        "containers ran at once: {containers:?}"
    );
    assert!(most_seen <= 2, "docker ps saw {most_seen} containers");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_waiting_for_the_only_slot_are_served_in_arrival_order() {
    let _one = ONE_HOST.lock().await;
    let Some(docker) = docker_with_image().await else {
        return;
    };
    // f0 holds the slot with a slow turn while the others line up.
    let (model, arrivals) = timed_model(|text| {
        if text == "hold the slot" {
            Duration::from_millis(1500)
        } else {
            Duration::ZERO
        }
    })
    .await;
    let folders: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
    let groups: Vec<_> = folders
        .iter()
        .map(|f| group(&format!("term:{f}"), f, false, false))
        .collect();
    let overrides = [
        ("TALON_QUEUE_MAX_CONCURRENT_CONTAINERS", "1"),
        ("TALON_CONTAINER_IDLE_TIMEOUT", "200ms"),
    ];
    let mut host = start_host_with(docker, &model, &groups, &overrides).await;

    send("term:f0", "m1", "hold the slot");
    let deadline = Instant::now() + LIMIT;
    while model.request_count() == 0 {
        assert!(Instant::now() < deadline, "f0 never reached the model");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Wake f1..f4 in that order, each only once the previous one waits.
    for folder in &folders[1..] {
        send(&format!("term:{folder}"), "m1", &format!("from {folder}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while queue_status(folder).await["waiting_for_slot"] != true {
            assert!(
                Instant::now() < deadline,
                "{folder} never waited for a slot"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Its waiting task reaches the semaphore before the next group wakes.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut replies = Vec::new();
    for _ in &folders {
        replies.push(host.next_reply().await);
    }
    let order: Vec<String> = arrivals
        .lock()
        .unwrap()
        .iter()
        .map(|(_, text)| text.clone())
        .collect();
    assert_eq!(
        order,
        ["hold the slot", "from f1", "from f2", "from f3", "from f4"]
    );
    let expected: Vec<_> = order
        .iter()
        .map(|text| TerminalOutput::Reply(format!("reply to: {text}")))
        .collect();
    assert_eq!(replies, expected);
    host.stop().await;
}

// --- retry delays on the paused clock -------------------------------------------

/// A Docker engine on a unix socket that refuses every container create and
/// records, on tokio's clock, when each create arrived.
struct RefusingEngine {
    socket: PathBuf,
    creates: Arc<Mutex<Vec<tokio::time::Instant>>>,
    _dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl RefusingEngine {
    async fn start() -> RefusingEngine {
        use axum::http::{Method, StatusCode, Uri};
        let dir = tempfile::tempdir().expect("socket dir");
        let socket = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind the fake engine");
        let creates = Arc::new(Mutex::new(Vec::new()));
        let seen = creates.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
            let seen = seen.clone();
            async move {
                let create = method == Method::POST && uri.path().ends_with("/containers/create");
                if create {
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(tokio::time::Instant::now());
                    let body = serde_json::json!({"message": "the fake engine refuses"});
                    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body))
                } else {
                    let body = serde_json::json!({"message": "no such container"});
                    (StatusCode::NOT_FOUND, axum::Json(body))
                }
            }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RefusingEngine {
            socket,
            creates,
            _dir: dir,
            server,
        }
    }

    fn creates(&self) -> Vec<tokio::time::Instant> {
        self.creates.lock().unwrap().clone()
    }
}

impl Drop for RefusingEngine {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn retries_wait_the_base_then_double_and_stop_at_the_limit() {
    use talon::host::{build_provider, HostContext};
    // The queue's failure notice goes to the process-wide terminal channel.
    let _one = ONE_HOST.lock().await;
    let engine = RefusingEngine::start().await;
    let docker = bollard::Docker::connect_with_unix(
        &engine.socket.display().to_string(),
        120,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("a client for the fake engine");
    let home = Home::new();
    let paths = home.paths();
    paths.ensure().unwrap();
    // The model is never reached: no container ever starts.
    let mut env = host_env(home.path(), "http://127.0.0.1:9");
    env.push(("TALON_QUEUE_RETRY_BASE".into(), "200ms".into()));
    env.push(("TALON_QUEUE_MAX_RETRIES".into(), "3".into()));
    let config = talon::config::Config::from_sources(None, "test", &[], &env).unwrap();
    let provider = build_provider(&config, &paths).unwrap();
    let store = Store::open(&paths.db()).unwrap();
    let timing = group("term:timing", "timing", false, false);
    store.register_group(&timing).unwrap();
    store
        .insert_message(&message("term:timing", "t1", "try me"))
        .unwrap();
    let ctx = Arc::new(HostContext::new(store.clone(), config, paths, docker, provider).unwrap());
    let (queue, handle) = Actor::spawn(
        Some(queue_name("timing")),
        GroupQueue,
        GroupQueueArgs { group: timing, ctx },
    )
    .await
    .expect("spawn the queue");

    let mut waited = 0;
    while store.failed_batches(10).unwrap().is_empty() {
        assert!(waited < 10_000, "the batch was never given up");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    let creates = engine.creates();
    assert_eq!(creates.len(), 4, "1 try + 3 retries");
    let gaps: Vec<Duration> = creates.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, expected_ms) in gaps.iter().zip([200u64, 400, 800]) {
        let expected = Duration::from_millis(expected_ms);
        assert!(
            *gap >= expected && *gap < expected + Duration::from_millis(50),
            "retry gaps {gaps:?}, expected 200/400/800 ms"
        );
    }
    let failed = &store.failed_batches(10).unwrap()[0];
    assert_eq!(failed.attempts, 4);
    assert!(
        failed.reason.contains("the fake engine refuses"),
        "{failed:?}"
    );
    let seq = seq_of(&store, "term:timing", "t1");
    assert_eq!(store.cursor("term:timing").unwrap(), seq);
    let notices = store.unsent_outbox().unwrap();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].text.contains("could not be processed"));

    // Given up is final: a long while later nothing else was tried.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(engine.creates().len(), 4);
    queue.stop(None);
    let _ = handle.await;
}
