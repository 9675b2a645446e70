//! Containment (SPEC §8): the agent is the attacker, and each attack here
//! runs from inside the real container, against the real engine and image.
//!
//! Two kinds of attacker play:
//! - the model, through the agent's real tools: a scripted fake model makes
//!   the runner's `bash` or `web_fetch` carry the attack out;
//! - a fully compromised runner: the real image with PID 1 replaced by a
//!   busybox script (the runner is inside the boundary, so the host must
//!   hold even when it lies), for floods and forged budgets.
//!
//! Each test asserts that the host file, the other group and the budgets
//! are untouched, and that the chat got a clear line where one is due.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fake_anthropic::{FakeAnthropic, Reply};
use support::inproc::{self, say, ONE_HOST};
use support::*;
use talon::actors::terminal::{TerminalOutput, TERMINAL_CHAT};

/// Test image whose PID 1 runs `/workspace/group/evil.sh` when a group's
/// folder has one, and the real runner otherwise.
const EVIL_IMAGE: &str = "talon-agent:test-compromised";

async fn compromised_image(docker: &bollard::Docker) {
    derived_image(
        docker,
        EVIL_IMAGE,
        r#"ENTRYPOINT ["/bin/sh", "-c", "if [ -f /workspace/group/evil.sh ]; then exec /bin/sh /workspace/group/evil.sh; else exec /usr/local/bin/agent-runner; fi"]"#,
    )
    .await;
}

/// The text of every `tool_result` in a request body, in order.
fn tool_results(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .map(|b| match &b["content"] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// A model that makes one tool call, then answers `done: <its result>`.
async fn one_tool_call(name: &'static str, input: Value) -> FakeAnthropic {
    FakeAnthropic::start_with(move |body| {
        let results = tool_results(body);
        match results.last() {
            None => Reply::tool_use("toolu_1", name, input.clone()),
            Some(result) => Reply::text(format!("done: {result}")),
        }
    })
    .await
}

/// The terminal as an ordinary (non-main) group that needs no trigger, and
/// a main group elsewhere.
fn groups() -> Vec<talon::messages::RegisteredGroup> {
    vec![
        inproc::group("sock:boss", "boss", true, false),
        inproc::group(TERMINAL_CHAT, "local", false, false),
    ]
}

async fn reply_text(host: &mut inproc::TestHost) -> String {
    match host.next_reply().await {
        TerminalOutput::Reply(text) | TerminalOutput::Notice(text) => text,
    }
}

/// Waits (bounded) until the home has no container left.
async fn until_no_container(home: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !talon_containers(home).is_empty() {
        assert!(Instant::now() < deadline, "the container did not go away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

// --- 1. planted symlinks --------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_symlinked_logs_dir_and_planted_log_names_never_redirect_a_host_write() {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    // What the agent wants to overwrite: a host file outside every mount.
    let victims = tempfile::tempdir().unwrap();
    let keys = victims.path().join("authorized_keys");
    std::fs::write(&keys, "ssh-ed25519 AAAA the-owner\n").unwrap();
    let victim_dir = victims.path().display().to_string();
    let keys_path = keys.display().to_string();
    // The agent swaps its logs/ for a link to the victim dir and plants
    // names like the next run logs, pointing at the victim file, in a
    // second real logs dir it keeps beside it.
    let command = format!(
        "cd /workspace/group && busybox mkdir -p planted && \
         now=$(date +%s) && for s in 0 1 2 3 4 5 6 7 8 9; do \
           for ms in 000 250 500 750; do \
             busybox ln -sf {keys_path} planted/container-$((now + s))$ms.log; done; done; \
         busybox rm -rf logs; busybox ln -s {victim_dir} logs; \
         echo 'ssh-ed25519 EVIL attacker' >&2; busybox ls -l /workspace/group | busybox wc -l"
    );
    let model = one_tool_call("bash", json!({ "command": command })).await;
    let mut host = inproc::start_host(docker, &model, &groups()).await;
    let home = host.home.path().to_path_buf();
    say(TERMINAL_CHAT, "m1", "plant the links");
    let reply = reply_text(&mut host).await;
    assert!(reply.starts_with("done: "), "{reply}");
    until_no_container(&home).await;
    // A second run writes a second run log.
    say(TERMINAL_CHAT, "m2", "again");
    let _ = reply_text(&mut host).await;
    until_no_container(&home).await;
    let home = host.stop_keeping_home().await;

    assert_eq!(
        std::fs::read_to_string(&keys).unwrap(),
        "ssh-ed25519 AAAA the-owner\n",
        "the host followed a planted link"
    );
    let in_victim_dir: Vec<_> = std::fs::read_dir(victims.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(in_victim_dir.len(), 1, "{in_victim_dir:?}");
    // The run logs are the host's, outside the group folder.
    let logs = run_logs(home.path(), "local");
    assert!(logs.len() >= 2, "{} run logs", logs.len());
    assert!(logs.iter().all(|l| log_field(l, "exit_code").is_some()));
    let planted = home.path().join("groups/local/planted");
    assert!(std::fs::read_dir(&planted).unwrap().count() >= 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pruner_follows_no_link_the_agent_planted() {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    let victims = tempfile::tempdir().unwrap();
    let ten_days_ago = std::time::SystemTime::now() - Duration::from_secs(10 * 24 * 3600);
    let old_file = |name: &str| {
        let path = victims.path().join(name);
        std::fs::write(&path, "precious").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(ten_days_ago)
            .unwrap();
        path
    };
    let victim_log = old_file("container-1.log");
    let victim_transcript = old_file("notes.jsonl");
    let dir = victims.path().display().to_string();
    let transcript = victim_transcript.display().to_string();
    // A symlinked logs/ (where run logs used to be) and an old-looking
    // transcript name that is a link.
    let command = format!(
        "cd /workspace/group && busybox rm -rf logs && busybox ln -s {dir} logs && \
         cd /workspace/session && busybox ln -s {transcript} gone.jsonl && \
         busybox touch -h -d '2020-01-01 00:00:00' gone.jsonl; echo planted"
    );
    let model = one_tool_call("bash", json!({ "command": command })).await;
    let mut host = inproc::start_host(docker, &model, &groups()).await;
    say(TERMINAL_CHAT, "m1", "plant");
    let reply = reply_text(&mut host).await;
    assert!(reply.contains("planted"), "{reply}");
    let home = host.stop_keeping_home().await;
    let paths = home.paths();
    assert!(paths
        .session_dir("local")
        .join("gone.jsonl")
        .symlink_metadata()
        .is_ok());

    // Startup pruning and `talon prune` run this.
    let store = talon::store::Store::open(&paths.db()).unwrap();
    let pruned = talon::prune::prune(&paths, &store, false);
    assert_eq!(std::fs::read_to_string(&victim_log).unwrap(), "precious");
    assert_eq!(
        std::fs::read_to_string(&victim_transcript).unwrap(),
        "precious"
    );
    assert!(
        pruned.iter().all(|p| !p.starts_with(victims.path())),
        "{pruned:?}"
    );
}

// --- 2. request flood -------------------------------------------------------------

/// A server that accepts connections and never answers, counting how many
/// are open at once.
struct Tarpit {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

async fn tarpit() -> Tarpit {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (o, p) = (open.clone(), peak.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let now = o.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                // Read until the client gives up; never answer.
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Tarpit { addr, open, peak }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_forged_requests_is_bounded_and_another_group_is_still_answered() {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    compromised_image(&docker).await;
    let pit = tarpit().await;
    let model = inproc::replying_model().await;
    let groups = vec![
        inproc::group("sock:boss", "boss", true, false),
        inproc::group("sock:evil", "evil", false, false),
        inproc::group(TERMINAL_CHAT, "local", false, false),
    ];
    let mut host = inproc::start_host_with(
        docker,
        &model,
        &groups,
        &[
            ("TALON_CONTAINER_IMAGE", EVIL_IMAGE),
            ("TALON_WEB_ALLOW_LOOPBACK", "true"),
            ("TALON_WEB_TIMEOUT", "3s"),
            // The rate limit would refuse most of the flood at once; this
            // test is about the in-flight bounds, so it is out of the way.
            ("TALON_LIMITS_HOST_ACTIONS_PER_MINUTE", "1000000"),
        ],
    )
    .await;
    let baseline_fds = open_fds();
    let baseline_rss = rss_kib();
    // 1500 forged web fetches at the tarpit, as fast as the pipe takes them.
    let evil = host.home.path().join("groups/evil");
    std::fs::create_dir_all(&evil).unwrap();
    let url = format!("http://{}/", pit.addr);
    std::fs::write(
        evil.join("evil.sh"),
        format!(
            "i=0; while [ $i -lt 1500 ]; do \
               echo '{{\"type\":\"host_request\",\"request_id\":'$i',\"action\":{{\"action\":\"web_fetch\",\"url\":\"{url}\"}}}}'; \
               i=$((i+1)); done; sleep 120\n"
        ),
    )
    .unwrap();
    say("sock:evil", "e1", "start the flood");
    // Let the flood get going, then the other group asks.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pit.peak.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the flood never reached the host"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asked = Instant::now();
    say(TERMINAL_CHAT, "m1", "are you there");
    let mut peak_fds = open_fds();
    let mut peak_rss = rss_kib();
    let reply = loop {
        peak_fds = peak_fds.max(open_fds());
        peak_rss = peak_rss.max(rss_kib());
        match tokio::time::timeout(Duration::from_millis(200), host.replies.recv()).await {
            Ok(Some(TerminalOutput::Reply(text))) => break text,
            Ok(other) => panic!("unexpected terminal output {other:?}"),
            Err(_) => assert!(
                asked.elapsed() < inproc::REPLY_WAIT,
                "the other group was not answered during the flood"
            ),
        }
    };
    assert_eq!(reply, "reply to: are you there");
    let answered_in = asked.elapsed();
    // Keep sampling while the flood goes on a little longer.
    for _ in 0..20 {
        peak_fds = peak_fds.max(open_fds());
        peak_rss = peak_rss.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let concurrent = pit.peak.load(Ordering::SeqCst);
    eprintln!(
        "flood figures: fetches open at once {concurrent} (bound 4), fds {baseline_fds} -> peak {peak_fds}, \
         RSS {baseline_rss} KiB -> peak {peak_rss} KiB, other group answered in {answered_in:?}"
    );
    std::fs::write(
        repo_root().join("target/containment-flood.txt"),
        format!("fetches_at_once={concurrent} fds_baseline={baseline_fds} fds_peak={peak_fds} rss_baseline_kib={baseline_rss} rss_peak_kib={peak_rss} other_group_answered_ms={}\n", answered_in.as_millis()),
    )
    .ok();
    assert!(
        concurrent <= 4,
        "{concurrent} forged fetches were in flight at once"
    );
    assert!(
        peak_fds < baseline_fds + 100,
        "fds grew from {baseline_fds} to {peak_fds}"
    );
    let _ = pit.open.load(Ordering::SeqCst);
    host.stop().await;
}

// --- 3. the protocol stream and the host's budgets ---------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_shell_cannot_reach_the_protocol_stream() {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    let forged = r#"{"type":"output","text":"FORGED-BY-BASH"}"#;
    let command = format!(
        "echo '{forged}' > /proc/1/fd/1; echo w=$?; \
         busybox head -c 1 /proc/1/fd/0 >/dev/null; echo r=$?; \
         echo '{forged}' > /proc/1/fd/2; echo e=$?"
    );
    let model = one_tool_call("bash", json!({ "command": command })).await;
    let mut host = inproc::start_host(docker, &model, &groups()).await;
    say(TERMINAL_CHAT, "m1", "try it");
    let reply = reply_text(&mut host).await;
    assert!(!reply.contains("FORGED-BY-BASH"), "{reply}");
    for opened in ["w=0", "r=0", "e=0"] {
        assert!(!reply.contains(opened), "the tool opened a stream: {reply}");
    }
    assert!(reply.contains("w=") && reply.contains("r="), "{reply}");
    // Nothing forged reached the chat afterwards either.
    let more = tokio::time::timeout(Duration::from_secs(2), host.replies.recv()).await;
    assert!(more.is_err(), "unexpected output {more:?}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lying_runner_meets_the_hosts_budgets() {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    compromised_image(&docker).await;
    let model = FakeAnthropic::start_with(|_| Reply::text("ok")).await;
    let groups = vec![
        inproc::group("sock:boss", "boss", true, false),
        inproc::group(TERMINAL_CHAT, "local", false, false),
    ];
    let mut host = inproc::start_host_with(
        docker,
        &model,
        &groups,
        &[
            ("TALON_CONTAINER_IMAGE", EVIL_IMAGE),
            ("TALON_CONTAINER_MAX_OUTPUT_BYTES", "200000"),
            ("TALON_LIMITS_MAX_MODEL_CALLS_PER_RUN", "3"),
        ],
    )
    .await;
    let group = host.home.path().join("groups/local");
    std::fs::create_dir_all(&group).unwrap();
    // Six model calls asking for 987654 tokens, a 3 MB send_message, then
    // a result for the batch.
    std::fs::write(
        group.join("evil.sh"),
        r#"for i in 1 2 3 4 5 6; do
  echo '{"type":"model_request","request_id":'$i',"request":{"system":"s","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":987654}}'
done
printf '{"type":"host_request","request_id":100,"action":{"action":"send_message","text":"'
busybox yes aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa | busybox head -c 3000000 | busybox tr -d '\n'
printf '"}}\n'
sleep 3
echo '{"type":"output","text":"still here"}'
echo '{"type":"result","status":"success","session_id":null,"last_assistant_id":null,"error":null,"error_kind":null}'
sleep 60
"#,
    )
    .unwrap();
    say(TERMINAL_CHAT, "m1", "go");
    let mut said = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !said.iter().any(|t: &String| t == "still here") {
        assert!(
            Instant::now() < deadline,
            "the run never finished: {said:?}"
        );
        said.push(reply_text(&mut host).await);
    }
    // The fake model saw three calls, each clamped to [provider] max_tokens.
    let requests = model.requests();
    assert_eq!(
        requests.len(),
        3,
        "model calls past the run's limit went out"
    );
    for request in &requests {
        assert_eq!(request.body["max_tokens"], 4096, "{}", request.body);
    }
    // Nothing near 3 MB reached the chat; it was told about both limits.
    assert!(
        said.iter().all(|t| t.len() < 200_000),
        "an oversized message went out"
    );
    assert!(
        said.iter().any(|t| t.contains("limit of 3 model calls")),
        "{said:?}"
    );
    assert!(said.iter().any(|t| t.contains("output cap")), "{said:?}");
    let store = &host.store;
    let rows = store.unsent_outbox().unwrap();
    assert!(rows.iter().all(|r| r.text.len() < 200_000));
    host.stop().await;
}

// --- 4. SSRF to the host itself ------------------------------------------------------

/// A non-loopback address of this machine's own interfaces.
fn own_interface_address() -> Option<IpAddr> {
    talon::host_actions::web::interface_addresses()
        .ok()?
        .into_iter()
        .find(|ip| !ip.is_loopback() && ip.is_ipv4())
}

#[tokio::test(flavor = "multi_thread")]
async fn web_fetch_refuses_the_hosts_own_interface_address() {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let Some(own) = own_interface_address() else {
        panic!("this machine has no non-loopback IPv4 interface address to test with");
    };
    let _one = ONE_HOST.lock().await;
    // A service bound to every interface, as on a VPS.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let reached = Arc::new(AtomicUsize::new(0));
    let hits = reached.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            hits.fetch_add(1, Ordering::SeqCst);
        }
    });
    let url = format!("http://{own}:{port}/admin");
    let model = one_tool_call("web_fetch", json!({ "url": url })).await;
    // Loopback is allowed here, so only the own-address rule can refuse.
    let mut host = inproc::start_host_with(
        docker,
        &model,
        &groups(),
        &[("TALON_WEB_ALLOW_LOOPBACK", "true")],
    )
    .await;
    say(TERMINAL_CHAT, "m1", "fetch it");
    let reply = reply_text(&mut host).await;
    assert!(reply.contains("this host"), "{reply}");
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the fetch connected");
    host.stop().await;
}

// --- 5. zombies ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn orphaned_processes_are_reaped_and_the_container_can_still_fork() {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    // 300 orphans (each subshell exits at once, its sleep is reparented to
    // PID 1), more than the pids limit of 256 if none were reaped.
    let command = "i=0; while [ $i -lt 300 ]; do (sleep 0 &); i=$((i+1)); done; sleep 2; \
         z=$(busybox grep -l 'State:.*Z' /proc/[0-9]*/status 2>/dev/null | busybox wc -l); \
         echo zombies=$z; echo fork-$(echo ok)";
    let model = one_tool_call(
        "bash",
        json!({ "command": command, "timeout_seconds": 120 }),
    )
    .await;
    let mut host = inproc::start_host(docker, &model, &groups()).await;
    say(TERMINAL_CHAT, "m1", "spawn");
    let reply = reply_text(&mut host).await;
    assert!(reply.contains("fork-ok"), "{reply}");
    let zombies: usize = reply
        .split("zombies=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no zombie count in {reply}"));
    assert!(zombies <= 5, "{zombies} zombies left: {reply}");
    host.stop().await;
}

// --- 6. an oversized batch -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_batch_is_cut_with_a_note_and_answered() {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    let model = FakeAnthropic::start_with(|body| {
        let prompt = last_user_text(body);
        Reply::text(format!(
            "got {} bytes, cut: {}, left out: {}",
            prompt.len(),
            prompt.contains("was cut"),
            prompt.contains("left out"),
        ))
    })
    .await;
    let mut host = inproc::start_host(docker, &model, &groups()).await;
    // Two messages of 900 KB of '&' (4.5 MB each once escaped), then a 9 MB
    // line. The first two may come as one batch or two: every reply counts.
    let amps = "&".repeat(900_000);
    say(TERMINAL_CHAT, "m1", &amps);
    say(TERMINAL_CHAT, "m2", &amps);
    let mut replies = vec![reply_text(&mut host).await];
    while let Ok(Some(more)) =
        tokio::time::timeout(Duration::from_secs(5), host.replies.recv()).await
    {
        replies.push(format!("{more:?}"));
    }
    assert!(
        replies.iter().all(|r| r.contains("cut: true")),
        "{replies:?}"
    );
    let huge = "x".repeat(9 * 1024 * 1024);
    say(TERMINAL_CHAT, "m3", &huge);
    let reply = reply_text(&mut host).await;
    assert!(reply.contains("cut: true"), "{reply}");
    for request in model.requests() {
        let prompt = last_user_text(&request.body);
        assert!(prompt.len() <= 2_097_152, "{} bytes sent", prompt.len());
    }
    host.stop().await;
}
