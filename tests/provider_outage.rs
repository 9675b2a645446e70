//! A model provider that cannot be reached (issue 11, item 3): the chat is
//! told within the configured delay that it is unreachable and that talon
//! keeps trying; the batch waits without spending its retries; when the
//! provider is back, a probe closes the circuit and the queue answers by
//! itself. The provider here is a port nobody listens on, then the fake
//! Anthropic server started on that same port.

mod support;

use std::time::{Duration, Instant};

use support::fake_anthropic::{FakeAnthropic, Reply};
use support::inproc::{self, ONE_HOST};
use support::*;
use talon::actors::router::RouterMsg;
use talon::actors::terminal::{TerminalOutput, TERMINAL_CHAT};
use talon::provider::{
    AnthropicConfig, AnthropicProvider, Credential, ErrorKind, ModelRequest, Provider, RetryPolicy,
};

/// An address where nothing listens (yet).
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn request() -> ModelRequest {
    serde_json::from_value(serde_json::json!({
        "system": "s",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 10,
    }))
    .unwrap()
}

#[tokio::test]
async fn an_unreachable_provider_opens_its_circuit_and_a_probe_closes_it() {
    let address = free_address();
    let provider = AnthropicProvider::new(AnthropicConfig {
        base_url: format!("http://{address}"),
        credential: Credential::ApiKey(talon::secret::Secret::new("sk-test")).into(),
        model: "m".into(),
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_retries: 5,
            base: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            unreachable_after: Duration::from_millis(300),
            probe_interval: Duration::from_millis(100),
        },
    })
    .unwrap();
    let started = Instant::now();
    let failure = provider.complete(request()).await.unwrap_err();
    assert_eq!(failure.kind, ErrorKind::Unavailable, "{failure:?}");
    assert!(
        failure
            .message
            .contains("could not reach the model provider")
            && failure.message.contains(&address),
        "{}",
        failure.message
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // While open, calls fail at once and nothing is sent.
    let fast = Instant::now();
    let again = provider.complete(request()).await.unwrap_err();
    assert_eq!(again.kind, ErrorKind::Unavailable);
    assert!(again.message.contains("keeps trying"), "{}", again.message);
    assert!(fast.elapsed() < Duration::from_millis(50));

    // The provider comes back where it was: the probe closes the circuit.
    let model = FakeAnthropic::start_on(&address, |_| Reply::text("back")).await;
    let circuit = provider.circuit().expect("a circuit");
    tokio::time::timeout(Duration::from_secs(5), circuit.wait_closed())
        .await
        .expect("the probe closed the circuit");
    let reply = provider.complete(request()).await.unwrap();
    assert!(format!("{:?}", reply.content).contains("back"));
    assert_eq!(model.message_requests().len(), 1, "only the real call");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_is_told_within_the_delay_and_the_queue_resumes_by_itself() {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    let address = free_address();
    let url = format!("http://{address}");
    // A placeholder fake only for the helper's signature; the host is sent
    // to the dead address instead.
    let placeholder = FakeAnthropic::start_with(|_| Reply::text("wrong server")).await;
    let groups = [inproc::group(TERMINAL_CHAT, "main", true, false)];
    let mut host = inproc::start_host_with(
        docker,
        &placeholder,
        &groups,
        &[
            ("TALON_PROVIDER_BASE_URL", url.as_str()),
            ("TALON_PROVIDER_UNREACHABLE_AFTER", "1s"),
            ("TALON_PROVIDER_PROBE_INTERVAL", "200ms"),
            ("TALON_QUEUE_MAX_RETRIES", "2"),
        ],
    )
    .await;
    let asked = Instant::now();
    inproc::router()
        .cast(RouterMsg::Inbound(inproc::message(
            TERMINAL_CHAT,
            "m1",
            "hello",
        )))
        .unwrap();
    let notice = match host.next_reply().await {
        TerminalOutput::Reply(text) | TerminalOutput::Notice(text) => text,
    };
    let told_in = asked.elapsed();
    assert!(
        notice.contains("unreachable") && notice.contains("keeps trying"),
        "{notice}"
    );
    assert!(
        notice.contains(&address),
        "the line says what was tried: {notice}"
    );
    assert!(!notice.contains('\n'), "{notice}");
    // The configured 1 s of retries, plus a container start.
    assert!(told_in < Duration::from_secs(30), "told after {told_in:?}");

    // Long past the retry budget (2 retries of 20 ms), the batch still waits
    // instead of failing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(host.store.failed_batches(10).unwrap().is_empty());
    assert!(
        host.replies.try_recv().is_err(),
        "the chat heard more than one line about the outage"
    );

    // The provider comes back: the queue answers without being asked again.
    let model = FakeAnthropic::start_on(&address, |body| {
        Reply::text(format!(
            "reply to: {}",
            last_message_text(&last_user_text(body))
        ))
    })
    .await;
    let reply = host.next_reply().await;
    assert!(
        matches!(&reply, TerminalOutput::Reply(text) if text == "reply to: hello"),
        "{reply:?}"
    );
    assert!(host.store.failed_batches(10).unwrap().is_empty());
    assert_eq!(model.message_requests().len(), 1);
    eprintln!("outage figures: told in {told_in:?}");
    host.stop().await;
}
