//! Queue figures (issue 4):
//!
//! * **warm path**: message in → reply out while the group's container is
//!   already running, with a fake model that answers instantly: median and
//!   p99 over many messages. This is talon's whole overhead plus one
//!   loopback HTTP call to the fake model and the runner's turn.
//! * **ingest**: messages per second stored and routed, with no container
//!   work (a registered group whose trigger they do not match).
//!
//! Run: `cargo bench --bench queue_paths` (TALON_BENCH_WARM=N, TALON_BENCH_INGEST=N).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use common::{env_count, percentile};

use ractor::Actor;
use support::fake_anthropic::{FakeAnthropic, Reply};
use support::inproc::{group, message, router, start_host_with};
use support::{docker_with_image, Home};
use talon::actors::router::{Router, RouterArgs, RouterMsg};
use talon::actors::terminal::{TerminalOutput, TERMINAL_CHAT};
use talon::store::Store;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        ingest(env_count("TALON_BENCH_INGEST", 20_000)).await;
        warm(env_count("TALON_BENCH_WARM", 1000)).await;
    });
}

async fn ingest(count: usize) {
    let home = Home::new();
    let store = Store::open(&home.path().join("data/talon.db")).expect("store");
    store
        .register_group(&group("term:quiet", "quiet", false, true))
        .expect("group");
    let args = RouterArgs {
        store,
        default_trigger: talon::trigger::default_pattern("Talon"),
    };
    let (router, handle) = Actor::spawn(Some("bench-router".into()), Router, args)
        .await
        .expect("router");
    let started = Instant::now();
    for n in 0..count {
        let mut msg = message("term:quiet", &format!("i{n}"), "just chatter");
        msg.sender_name = format!("user{}", n % 7);
        router.cast(RouterMsg::Inbound(msg)).expect("cast");
    }
    // The router answers Inspect after everything before it in its mailbox.
    let state = ractor::call!(router, RouterMsg::Inspect).expect("inspect");
    let elapsed = started.elapsed();
    assert_eq!(state["stored"], count as u64);
    println!(
        "ingest: {count} messages stored and routed in {:.0} ms: {:.0} messages/s",
        elapsed.as_secs_f64() * 1000.0,
        count as f64 / elapsed.as_secs_f64()
    );
    router.stop(None);
    let _ = handle.await;
}

async fn warm(count: usize) {
    let Some(docker) = docker_with_image().await else {
        eprintln!("no Docker engine: no warm-path figures");
        return;
    };
    let model = FakeAnthropic::start_with(|_| Reply::text("ok")).await;
    let overrides = [("TALON_CONTAINER_IDLE_TIMEOUT", "10m")];
    let mut host = start_host_with(
        docker,
        &model,
        &[group(TERMINAL_CHAT, "main", true, false)],
        &overrides,
    )
    .await;
    let mut samples = Vec::with_capacity(count);
    // The first message starts the container; the rest take the warm path.
    for n in 0..=count {
        let started = Instant::now();
        router()
            .cast(RouterMsg::Inbound(message(
                TERMINAL_CHAT,
                &format!("w{n}"),
                "ping",
            )))
            .expect("cast");
        match host.next_reply().await {
            TerminalOutput::Reply(_) => {}
            other => panic!("unexpected {other:?}"),
        }
        if n > 0 {
            samples.push(started.elapsed());
        }
    }
    host.stop().await;
    samples.sort();
    println!(
        "warm path over {count} messages: median {:.2} ms, p99 {:.2} ms",
        percentile(&samples, 0.5).as_secs_f64() * 1000.0,
        percentile(&samples, 0.99).as_secs_f64() * 1000.0
    );
}
