//! Tier routing end to end (spec §7): the real binary and agent image, a fake
//! Anthropic server as the HEAVY tier and a fake chat-completions server as
//! the LIGHT tier (a copilot proxy, configured by the seeds' COPILOT_* names),
//! and the routing log the host writes.

mod support;

#[path = "support/fake_openai.rs"]
mod fake_openai;

use std::time::Duration;

use support::fake_anthropic::{FakeAnthropic, Reply};
use support::*;

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn short_batches_go_light_keyword_batches_go_heavy_and_each_is_logged() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let heavy = FakeAnthropic::start(vec![Reply::text("heavy answer")]).await;
    let light = fake_openai::FakeOpenAi::start_with_key(
        vec![fake_openai::Reply::text("light answer")],
        "copilot-dummy",
    )
    .await;
    let home = Home::new();
    let mut env = host_env(home.path(), &heavy.base_url);
    for (name, value) in [
        ("COPILOT_API_URL", light.base_url.as_str()),
        ("COPILOT_MODEL", "gpt-4o-mini"),
        ("COPILOT_API_KEY", "copilot-dummy"),
        ("TALON_ROUTER_ENABLED", "true"),
        ("TALON_ROUTER_LIGHT_MAX_CHARS", "40"),
    ] {
        env.push((name.to_string(), value.to_string()));
    }

    // One chat per batch: a warm container keeps the provider of its run.
    let batches: [(&[u8], &str); 2] = [
        (b"hi\n", "light answer\n"),
        (b"please debug this\n", "heavy answer\n"),
    ];
    for (input, answer) in batches {
        let run_env = env.clone();
        let output = tokio::task::spawn_blocking(move || piped_chat(&run_env, input, LIMIT))
            .await
            .unwrap();
        assert!(output.status.success(), "stderr: {}", stderr_of(&output));
        assert_eq!(stdout_of(&output), answer);
    }

    assert_eq!(light.request_count(), 1);
    assert_eq!(heavy.request_count(), 1);
    let light_request = &light.requests()[0];
    assert_eq!(light_request.body["model"], "gpt-4o-mini");
    assert_eq!(
        light_request.header("authorization"),
        Some("Bearer copilot-dummy")
    );

    let log = std::fs::read_to_string(home.path().join("logs/routing-metrics.jsonl"))
        .expect("the routing log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let routes: Vec<_> = lines.iter().filter(|l| l["event"] == "route").collect();
    let calls: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "model_call")
        .collect();
    assert_eq!(routes.len(), 2, "{log}");
    assert_eq!(calls.len(), 2, "{log}");
    assert_eq!(
        (&routes[0]["tier"], &routes[1]["tier"]),
        (&"light".into(), &"heavy".into())
    );
    assert_eq!(calls[0]["provider"], "openai");
    assert_eq!(calls[0]["model"], "gpt-4o-mini");
    assert_eq!(calls[1]["provider"], "anthropic");
    assert_eq!(calls[1]["reason"], "keyword \"debug\"");
    for call in calls {
        assert_eq!(call["group"], "main");
        assert_eq!(call["ok"], true);
        assert!(call["input_tokens"].as_u64().unwrap_or(0) > 0, "{call}");
        assert!(call["latency_ms"].is_u64(), "{call}");
    }
    assert!(!log.contains("copilot-dummy"), "the key leaked: {log}");
}
