//! Channel figures (issue 6):
//!
//! * **split**: time to split a long mixed reply (prose, code blocks, emoji,
//!   RTL text) for Discord's and Slack's limits.
//! * **Slack / Discord warm path**: a platform event in → the reply posted to
//!   the platform, with the group's container already running and a fake
//!   model that answers at once: median and p99. Fake Slack and Discord on
//!   127.0.0.1 speak the real protocols; the fakes' waits poll every 2 ms,
//!   so figures carry up to that much extra.
//!
//! Run: `cargo bench --bench channel_paths` (TALON_BENCH_CHANNEL=N messages).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../tests/support/fake_discord.rs"]
mod fake_discord;
#[path = "../tests/support/fake_slack.rs"]
mod fake_slack;

use std::time::{Duration, Instant};

use common::{env_count, ms, percentile};

use support::docker_with_image;
use support::fake_anthropic::{FakeAnthropic, Reply};
use support::inproc::{group, start_host_with};
use talon::channels::split::{split_message, DISCORD_LIMIT, SLACK_LIMIT};

const WAIT: Duration = Duration::from_secs(30);

fn main() {
    split_figures();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let count = env_count("TALON_BENCH_CHANNEL", 300);
    runtime.block_on(async {
        slack_warm(count).await;
        discord_warm(count).await;
    });
}

fn long_reply() -> String {
    let mut text = String::new();
    for n in 0..400 {
        text.push_str(&format!(
            "Paragraph {n}: the quick brown fox 🦊 jumps over the lazy dog. שלום עולם! 👨‍👩‍👧‍👦 ok?\n"
        ));
        if n % 10 == 0 {
            text.push_str("```rust\nfn main() {\n    println!(\"hello\");\n}\n```\n");
        }
        text.push('\n');
    }
    text
}

fn split_figures() {
    let text = long_reply();
    for (name, limit) in [("discord", DISCORD_LIMIT), ("slack", SLACK_LIMIT)] {
        let mut samples = Vec::new();
        let mut parts = 0;
        for _ in 0..50 {
            let started = Instant::now();
            parts = std::hint::black_box(split_message(&text, limit)).len();
            samples.push(started.elapsed());
        }
        samples.sort();
        println!(
            "split ({name}): {} KB reply into {parts} parts: median {:.3} ms",
            text.len() / 1024,
            ms(percentile(&samples, 0.5))
        );
    }
}

async fn slack_warm(count: usize) {
    let Some(docker) = docker_with_image().await else {
        eprintln!("no Docker engine: no channel figures");
        return;
    };
    let slack = fake_slack::FakeSlack::start(fake_slack::FakeSlackConfig::default()).await;
    let model = FakeAnthropic::start_with(|_| Reply::text("ok")).await;
    let api_url = slack.api_url();
    let overrides = [
        ("TALON_CONTAINER_IDLE_TIMEOUT", "10m"),
        ("SLACK_BOT_TOKEN", "xoxb-test"),
        ("SLACK_APP_TOKEN", "xapp-test"),
        ("TALON_CHANNELS_SLACK_API_URL", api_url.as_str()),
    ];
    let host = start_host_with(
        docker,
        &model,
        &[group("slack:C1", "team", false, false)],
        &overrides,
    )
    .await;
    assert!(slack.wait_connections(1, WAIT).await, "slack connected");
    let mut samples = Vec::with_capacity(count);
    // The first message starts the container; the rest take the warm path.
    for n in 0..=count {
        let ts = format!("1700000000.{n:06}");
        let event = fake_slack::message_event("C1", "U0ALICE", "ping", &ts, None);
        let started = Instant::now();
        assert!(slack.send_events_api(&format!("env-{n}"), event));
        let posts = slack.wait_posts(n + 1, WAIT).await;
        assert_eq!(posts.len(), n + 1, "reply {n} posted");
        if n > 0 {
            samples.push(started.elapsed());
        }
    }
    host.stop().await;
    samples.sort();
    println!(
        "slack warm path over {count} messages: median {:.2} ms, p99 {:.2} ms",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99))
    );
}

async fn discord_warm(count: usize) {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let discord =
        fake_discord::FakeDiscord::start(fake_discord::FakeDiscordConfig::default()).await;
    let model = FakeAnthropic::start_with(|_| Reply::text("ok")).await;
    let origin = discord.proxy_url();
    let overrides = [
        ("TALON_CONTAINER_IDLE_TIMEOUT", "10m"),
        ("DISCORD_BOT_TOKEN", "fake-discord-token"),
        ("TALON_CHANNELS_DISCORD_API_URL", origin.as_str()),
    ];
    let host = start_host_with(
        docker,
        &model,
        &[group("dc:200", "home", false, false)],
        &overrides,
    )
    .await;
    assert!(discord.wait_readies(1, WAIT).await, "discord identified");
    let mut samples = Vec::with_capacity(count);
    for n in 0..=count {
        let spec = fake_discord::MessageSpec {
            channel_id: "200".into(),
            guild_id: Some("300".into()),
            author_id: "400".into(),
            author_name: "ann".into(),
            content: "ping".into(),
            ..Default::default()
        };
        let started = Instant::now();
        discord.send_message_create(spec);
        let created = discord.wait_created(n + 1, WAIT).await;
        assert_eq!(created.len(), n + 1, "reply {n} created");
        if n > 0 {
            samples.push(started.elapsed());
        }
    }
    host.stop().await;
    samples.sort();
    println!(
        "discord warm path over {count} messages: median {:.2} ms, p99 {:.2} ms",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99))
    );
}
