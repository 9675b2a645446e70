//! End-to-end latency: a message in → the agent's reply out, through the
//! router, the group queue, a real container and the agent runner, with a
//! fake model that answers instantly.
//!
//! * cold: no container running (each message starts one);
//! * warm: the group's container is already running (piped follow-ups);
//! * baseline: a bare `docker run --rm -i <image>` of the same image.
//!
//! Run: `cargo bench --bench chat_cold` (set TALON_BENCH_RUNS to change N).

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use support::fake_anthropic::{FakeAnthropic, Reply};
use support::{docker_with_image, host_env, talon_containers, Home, TEST_IMAGE};
use talon::actors::router::{RouterMsg, ROUTER};
use talon::actors::terminal::{TerminalArgs, TerminalOutput, TERMINAL_CHAT};
use talon::config::Config;
use talon::host::{self, HostContext};
use talon::messages::{InboundMessage, RegisteredGroup};
use talon::store::Store;
use tokio::sync::{mpsc, Semaphore};

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn message(n: usize) -> InboundMessage {
    InboundMessage {
        chat_id: TERMINAL_CHAT.into(),
        platform_msg_id: format!("bench-{n}"),
        sender_id: "bench".into(),
        sender_name: "Bench".into(),
        content: format!("message {n}"),
        timestamp: talon::store::now_millis(),
        is_from_me: false,
        is_bot_message: false,
        reply_to: None,
        thread_id: None,
    }
}

fn main() {
    let runs: usize = std::env::var("TALON_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(runs));
}

async fn bench(runs: usize) {
    let Some(docker) = docker_with_image().await else {
        eprintln!("no Docker engine: nothing to measure");
        return;
    };
    let model = FakeAnthropic::start_with(|_| Reply::text("ok")).await;

    // Baseline: a bare container of the same image, stdin closed at once.
    let mut bare = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let status = Command::new("docker")
            .args(["run", "--rm", "-i", "--network", "none", TEST_IMAGE])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("docker run");
        assert!(status.success());
        bare.push(started.elapsed());
    }

    let home = Home::new();
    let paths = home.paths();
    paths.ensure().expect("home");
    let mut env = host_env(home.path(), &model.base_url);
    // Cold runs: the container closes right after each answer.
    env.push(("TALON_CONTAINER_IDLE_TIMEOUT".into(), "1ms".into()));
    let config = Config::from_sources(None, "bench", &[], &env).expect("config");
    let provider = host::build_provider(&config, &paths).expect("provider");
    let store = Store::open(&paths.db()).expect("store");
    store
        .register_group(&RegisteredGroup {
            chat_id: TERMINAL_CHAT.into(),
            name: "Bench".into(),
            folder: "main".into(),
            trigger_pattern: None,
            requires_trigger: false,
            is_main: true,
            container_config: None,
            added_at: 0,
        })
        .expect("group");
    let ctx = HostContext::new(store.clone(), config, paths, docker, provider).expect("ctx");
    let (tx, mut replies) = mpsc::unbounded_channel();
    let terminal = TerminalArgs {
        store,
        chat_id: TERMINAL_CHAT.into(),
        output: tx,
        gate: Arc::new(Semaphore::new(1)),
        recovered_through: None,
    };
    let host = host::start(Arc::new(ctx), host::Channels::terminal(terminal))
        .await
        .expect("host");
    let router: ActorRef<RouterMsg> = ractor::registry::where_is(ROUTER).expect("router").into();

    let mut cold = Vec::new();
    for n in 0..runs {
        while !talon_containers(home.path()).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        router.cast(RouterMsg::Inbound(message(n))).expect("router");
        match replies.recv().await {
            Some(TerminalOutput::Reply(_)) => cold.push(started.elapsed()),
            other => panic!("unexpected output {other:?}"),
        }
    }
    host.shutdown().await;

    let bare_median = median(&mut bare);
    let cold_median = median(&mut cold);
    println!("runs: {runs}");
    println!(
        "bare `docker run --rm -i` median: {:.1} ms",
        ms(bare_median)
    );
    println!(
        "talon cold message→reply median:  {:.1} ms",
        ms(cold_median)
    );
    println!(
        "ratio cold / bare: {:.2}",
        cold_median.as_secs_f64() / bare_median.as_secs_f64()
    );
}
