//! The Anthropic provider against the fake Messages API: wire format, the
//! credential headers, and which failures are retried (and how often).

#[path = "support/fake_anthropic.rs"]
mod fake_anthropic;

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use fake_anthropic::{FakeAnthropic, Reply};
use talon::messages::wire::{ChatMessage, ContentBlock, Role, ToolSpec};
use talon::provider::{
    AnthropicConfig, AnthropicProvider, Credential, ErrorKind, ModelRequest, Provider, RetryPolicy,
};
use talon::secret::Secret;

const API_KEY: &str = "sk-ant-test-canary-key";
const OAUTH_TOKEN: &str = "sk-ant-oat-canary-token";

fn config(base_url: &str, credential: Credential) -> AnthropicConfig {
    AnthropicConfig {
        base_url: base_url.to_string(),
        credential: credential.into(),
        model: "claude-test-model".into(),
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            ..RetryPolicy::default()
        },
    }
}

fn api_key() -> Credential {
    Credential::ApiKey(Secret::new(API_KEY))
}

fn provider(config: AnthropicConfig) -> AnthropicProvider {
    AnthropicProvider::new(config).expect("valid provider config")
}

fn ask(text: &str) -> ModelRequest {
    ModelRequest {
        system: "You are Talon.".into(),
        messages: vec![ChatMessage {
            role: Role::User,
            content: vec![ContentBlock::Text { text: text.into() }],
        }],
        max_tokens: 256,
        tools: Vec::new(),
    }
}

fn text_of(content: &[ContentBlock]) -> Vec<&str> {
    content
        .iter()
        .filter_map(|block| match block {
            ContentBlock::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_text_reply_is_parsed_and_the_request_has_the_wire_shape() {
    let fake = FakeAnthropic::start(vec![Reply::text("hello from the model")]).await;
    let reply = provider(config(&fake.base_url, api_key()))
        .complete(ask("hi there"))
        .await
        .expect("a reply");

    assert_eq!(reply.id, "msg_1");
    assert_eq!(text_of(&reply.content), ["hello from the model"]);
    assert_eq!(reply.stop_reason.as_deref(), Some("end_turn"));
    assert!(reply.input_tokens > 0 && reply.output_tokens > 0);

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/v1/messages")
    );
    assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.body,
        serde_json::json!({
            "model": "claude-test-model",
            "max_tokens": 256,
            "system": "You are Talon.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
        })
    );
}

#[tokio::test]
async fn the_fallback_echoes_and_ids_count_up() {
    let fake = FakeAnthropic::start(Vec::new()).await;
    // A trailing slash on the base URL must not produce `//v1/messages`.
    let provider = provider(config(&format!("{}/", fake.base_url), api_key()));
    let first = provider.complete(ask("one")).await.expect("first");
    let second = provider.complete(ask("two")).await.expect("second");
    assert_eq!(text_of(&first.content), ["echo: one"]);
    assert_eq!(text_of(&second.content), ["echo: two"]);
    assert_eq!((first.id.as_str(), second.id.as_str()), ("msg_1", "msg_2"));
    assert!(fake.requests().iter().all(|r| r.path == "/v1/messages"));
}

#[tokio::test]
async fn unknown_content_blocks_are_skipped_and_text_kept() {
    let fake = FakeAnthropic::start(vec![Reply::Raw {
        code: 200,
        body: serde_json::json!({
            "id": "msg_raw", "type": "message", "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "text", "text": "kept"},
            ],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 7, "output_tokens": 2},
        }),
    }])
    .await;
    let reply = provider(config(&fake.base_url, api_key()))
        .complete(ask("hi"))
        .await
        .expect("a reply");
    assert_eq!(text_of(&reply.content), ["kept"]);
    assert_eq!((reply.input_tokens, reply.output_tokens), (7, 2));
}

#[tokio::test]
async fn a_tool_call_round_trip_uses_the_messages_api_tool_shape() {
    let fake = FakeAnthropic::start(vec![Reply::tool_use(
        "toolu_7",
        "bash",
        serde_json::json!({"command": "ls"}),
    )])
    .await;
    let provider = provider(config(&fake.base_url, api_key()));
    let mut request = ask("list the files");
    request.tools = vec![ToolSpec {
        name: "bash".into(),
        description: "Run a shell command".into(),
        input_schema: serde_json::json!({
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        }),
    }];

    let first = provider.complete(request.clone()).await.expect("tool call");
    assert_eq!(first.stop_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        first.content,
        vec![ContentBlock::ToolUse {
            id: "toolu_7".into(),
            name: "bash".into(),
            input: serde_json::json!({"command": "ls"}),
        }]
    );

    // The runner sends the call back with its result; the fallback echoes.
    request.messages.push(ChatMessage {
        role: Role::Assistant,
        content: first.content.clone(),
    });
    request.messages.push(ChatMessage {
        role: Role::User,
        content: vec![ContentBlock::ToolResult {
            tool_use_id: "toolu_7".into(),
            content: "notes.txt".into(),
            is_error: false,
        }],
    });
    let second = provider.complete(request).await.expect("final answer");
    assert_eq!(second.stop_reason.as_deref(), Some("end_turn"));

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].body["tools"],
        serde_json::json!([{
            "name": "bash",
            "description": "Run a shell command",
            "input_schema": {
                "type": "object",
                "properties": {"command": {"type": "string"}},
                "required": ["command"],
            },
        }])
    );
    let sent = &requests[1].body["messages"];
    assert_eq!(
        sent[1],
        serde_json::json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_7", "name": "bash", "input": {"command": "ls"}}
        ]})
    );
    assert_eq!(
        sent[2],
        serde_json::json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_7", "content": "notes.txt", "is_error": false}
        ]})
    );
}

#[tokio::test]
async fn no_tools_means_no_tools_field() {
    let fake = FakeAnthropic::start(vec![Reply::text("ok")]).await;
    provider(config(&fake.base_url, api_key()))
        .complete(ask("hi"))
        .await
        .expect("a reply");
    assert!(fake.requests()[0].body.get("tools").is_none());
}

#[tokio::test]
async fn an_api_key_goes_in_x_api_key_only() {
    let fake = FakeAnthropic::start(Vec::new()).await;
    provider(config(&fake.base_url, api_key()))
        .complete(ask("hi"))
        .await
        .expect("a reply");
    let request = &fake.requests()[0];
    assert_eq!(request.header("x-api-key"), Some(API_KEY));
    assert_eq!(request.header("authorization"), None);
    assert_eq!(request.header("anthropic-beta"), None);
}

#[tokio::test]
async fn an_oauth_token_goes_as_bearer_with_the_beta_header_and_no_api_key() {
    let fake = FakeAnthropic::start(Vec::new()).await;
    let oauth = Credential::OAuthToken(Secret::new(OAUTH_TOKEN));
    provider(config(&fake.base_url, oauth))
        .complete(ask("hi"))
        .await
        .expect("a reply");
    let request = &fake.requests()[0];
    let bearer = format!("Bearer {OAUTH_TOKEN}");
    assert_eq!(request.header("authorization"), Some(bearer.as_str()));
    assert_eq!(request.header("anthropic-beta"), Some("oauth-2025-04-20"));
    assert_eq!(request.header("x-api-key"), None);
}

#[tokio::test]
async fn a_429_is_retried_after_the_servers_retry_after_not_the_backoff() {
    let fake = FakeAnthropic::start(vec![Reply::rate_limited(Some("0"))]).await;
    let mut cfg = config(&fake.base_url, api_key());
    // Were Retry-After ignored, the first retry would wait 10s and time out below.
    cfg.retry.base = Duration::from_secs(10);
    cfg.retry.max_delay = Duration::from_secs(30);
    let reply = tokio::time::timeout(Duration::from_secs(3), provider(cfg).complete(ask("hi")))
        .await
        .expect("retry-after 0 honoured")
        .expect("success after one retry");
    assert_eq!(text_of(&reply.content), ["echo: hi"]);
    assert_eq!(fake.request_count(), 2);
    // The body is encoded once; the retry sends the same request whole.
    let requests = fake.requests();
    assert!(
        requests[1].body["model"].is_string(),
        "{:?}",
        requests[1].body
    );
    assert_eq!(requests[0].body, requests[1].body);
}

#[tokio::test]
async fn rate_limiting_that_never_ends_is_rate_limited_after_all_retries() {
    let fake = FakeAnthropic::start_with(|_| Reply::rate_limited(Some("0"))).await;
    let failure = provider(config(&fake.base_url, api_key()))
        .complete(ask("hi"))
        .await
        .expect_err("retries run out");
    assert_eq!(failure.kind, ErrorKind::RateLimited);
    assert_eq!(
        failure.message,
        "the model provider is rate limiting (429) and retries ran out"
    );
    assert_eq!(fake.request_count(), 4);
}

#[tokio::test]
async fn an_overloaded_529_is_retried() {
    let fake = FakeAnthropic::start(vec![Reply::overloaded()]).await;
    let reply = provider(config(&fake.base_url, api_key()))
        .complete(ask("hi"))
        .await
        .expect("success after one retry");
    assert_eq!(text_of(&reply.content), ["echo: hi"]);
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn a_500_every_time_is_temporary_after_max_retries_plus_one_requests() {
    let fake = FakeAnthropic::start_with(|_| Reply::internal_error()).await;
    let mut cfg = config(&fake.base_url, api_key());
    cfg.retry.max_retries = 2;
    let failure = provider(cfg)
        .complete(ask("hi"))
        .await
        .expect_err("always 500");
    assert_eq!(failure.kind, ErrorKind::Temporary);
    assert_eq!(
        failure.message,
        "the model provider failed (500 Internal Server Error) after 2 retries"
    );
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn no_retries_configured_means_one_request() {
    let fake = FakeAnthropic::start_with(|_| Reply::internal_error()).await;
    let mut cfg = config(&fake.base_url, api_key());
    cfg.retry.max_retries = 0;
    let failure = provider(cfg).complete(ask("hi")).await.expect_err("500");
    assert_eq!(failure.kind, ErrorKind::Temporary);
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn a_401_is_auth_after_exactly_one_request_and_never_shows_the_key() {
    let fake = FakeAnthropic::start(vec![Reply::status(
        401,
        "authentication_error",
        &format!("invalid x-api-key {API_KEY}"),
    )])
    .await;
    let failure = provider(config(&fake.base_url, api_key()))
        .complete(ask("hi"))
        .await
        .expect_err("bad key");
    assert_eq!(failure.kind, ErrorKind::Auth);
    assert!(
        failure.message.contains("ANTHROPIC_API_KEY"),
        "{}",
        failure.message
    );
    assert!(failure.message.contains("401"), "{}", failure.message);
    assert!(!failure.message.contains(API_KEY), "{}", failure.message);
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn a_403_is_auth_and_not_retried() {
    let fake = FakeAnthropic::start(vec![Reply::status(
        403,
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    )])
    .await;
    let failure = provider(config(&fake.base_url, api_key()))
        .complete(ask("hi"))
        .await
        .expect_err("forbidden");
    assert_eq!(failure.kind, ErrorKind::Auth);
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn a_400_is_permanent_with_the_servers_reason_scrubbed_of_the_key() {
    let fake = FakeAnthropic::start(vec![Reply::status(
        400,
        "invalid_request_error",
        &format!("max_tokens: too large (key {API_KEY})"),
    )])
    .await;
    let failure = provider(config(&fake.base_url, api_key()))
        .complete(ask("hi"))
        .await
        .expect_err("bad request");
    assert_eq!(failure.kind, ErrorKind::Permanent);
    assert!(
        failure
            .message
            .contains("400 invalid_request_error: max_tokens: too large"),
        "{}",
        failure.message
    );
    assert!(!failure.message.contains(API_KEY), "{}", failure.message);
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn a_malformed_body_is_permanent_and_not_retried() {
    let fake = FakeAnthropic::start(vec![Reply::MalformedBody]).await;
    let failure = provider(config(&fake.base_url, api_key()))
        .complete(ask("hi"))
        .await
        .expect_err("unreadable");
    assert_eq!(failure.kind, ErrorKind::Permanent);
    assert_eq!(
        failure.message,
        "the model provider sent a reply that could not be read"
    );
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn a_reply_slower_than_the_request_timeout_is_temporary_and_retried() {
    let slow = || Reply::delayed(Duration::from_secs(5), Reply::text("too late"));
    let fake = FakeAnthropic::start_with(move |_| slow()).await;
    let mut cfg = config(&fake.base_url, api_key());
    cfg.request_timeout = Duration::from_millis(100);
    cfg.retry.max_retries = 1;
    let started = Instant::now();
    let failure = provider(cfg)
        .complete(ask("hi"))
        .await
        .expect_err("timed out");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(failure.kind, ErrorKind::Temporary);
    assert_eq!(
        failure.message,
        "the model provider did not answer within 100ms after 1 retry"
    );
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn a_refused_connection_is_unavailable_after_retries_and_says_what_was_tried() {
    // A port that was free a moment ago: nothing listens there now.
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let base_url = format!("http://{address}");
    let mut cfg = config(&base_url, api_key());
    cfg.retry.max_retries = 1;
    let failure = provider(cfg)
        .complete(ask("hi"))
        .await
        .expect_err("nothing listening");
    // Nothing answers at all: the provider's circuit opens (issue 11).
    assert_eq!(failure.kind, ErrorKind::Unavailable);
    assert!(
        failure.message.starts_with(&format!(
            "could not reach the model provider at {base_url} ("
        )),
        "{}",
        failure.message
    );
    assert!(
        failure.message.ends_with("after 1 retry"),
        "{}",
        failure.message
    );
}

/// Everything the provider logs in this test binary. The subscriber is the
/// process-wide default: a thread-scoped one can miss events whose callsite
/// another test thread registered first (tracing caches interest globally).
fn captured_log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || LogWriter(log))
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        log
    })
}

struct LogWriter(&'static Mutex<Vec<u8>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_retry_is_logged_with_status_attempt_and_delay_but_never_the_credential() {
    let log = captured_log();
    let fake = FakeAnthropic::start(vec![
        Reply::rate_limited(Some("0")),
        Reply::internal_error(),
        Reply::status(
            401,
            "authentication_error",
            &format!("bad token {OAUTH_TOKEN}"),
        ),
    ])
    .await;
    let oauth = Credential::OAuthToken(Secret::new(OAUTH_TOKEN));
    // A model name of its own tells this test's lines from other tests'.
    let mut cfg = config(&fake.base_url, oauth);
    cfg.model = "claude-log-test".into();
    let failure = provider(cfg)
        .complete(ask("hi"))
        .await
        .expect_err("ends in a 401");
    assert_eq!(failure.kind, ErrorKind::Auth);
    assert!(
        !failure.message.contains(OAUTH_TOKEN),
        "{}",
        failure.message
    );

    let text = String::from_utf8(log.lock().expect("log buffer").clone()).expect("utf-8 log");
    let mine: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("claude-log-test"))
        .collect();
    let retry_lines: Vec<&&str> = mine.iter().filter(|l| l.contains("retrying")).collect();
    assert_eq!(retry_lines.len(), 2, "{text}");
    assert!(retry_lines[0].contains("status=429"), "{text}");
    assert!(retry_lines[0].contains("attempt=1"), "{text}");
    assert!(retry_lines[0].contains("delay_ms=0"), "{text}");
    assert!(retry_lines[1].contains("status=500"), "{text}");
    assert!(retry_lines[1].contains("attempt=2"), "{text}");
    assert!(retry_lines[1].contains("delay_ms=2"), "{text}");
    assert!(
        mine.iter()
            .any(|l| l.contains("status=401") && l.contains("failed")),
        "the final failure is logged: {text}"
    );
    // No test in this binary may leak a credential into the log.
    assert!(
        !text.contains(OAUTH_TOKEN) && !text.contains(API_KEY),
        "{text}"
    );
}

#[tokio::test]
async fn a_transcript_holding_a_string_tool_input_is_sent_with_an_object() {
    // What an older LIGHT-tier turn left in a group's transcript.
    let fake = FakeAnthropic::start(vec![Reply::text("fine")]).await;
    let mut request = ask("write it");
    request.messages.push(ChatMessage {
        role: Role::Assistant,
        content: vec![ContentBlock::ToolUse {
            id: "call_1".into(),
            name: "write_file".into(),
            input: serde_json::Value::String("{\"path\": \"a".into()),
        }],
    });
    request.messages.push(ChatMessage {
        role: Role::User,
        content: vec![ContentBlock::ToolResult {
            tool_use_id: "call_1".into(),
            content: "bad input".into(),
            is_error: true,
        }],
    });
    // The fake refuses a non-object input, as the real API does.
    let reply = provider(config(&fake.base_url, api_key()))
        .complete(request)
        .await
        .expect("the request is accepted");
    assert_eq!(text_of(&reply.content), vec!["fine"]);
    let body = &fake.requests()[0].body;
    assert_eq!(
        body["messages"][1]["content"][0],
        serde_json::json!({"type": "tool_use", "id": "call_1", "name": "write_file", "input": {}})
    );
}

#[tokio::test]
async fn refusals_cuts_and_pauses_arrive_with_their_stop_reason_and_content() {
    let fake = FakeAnthropic::start(vec![
        Reply::message(Vec::new(), "refusal"),
        Reply::message(
            vec![serde_json::json!({"type": "text", "text": "The first"})],
            "max_tokens",
        ),
        Reply::message(
            vec![serde_json::json!({"type": "text", "text": "Searching"})],
            "pause_turn",
        ),
    ])
    .await;
    let provider = provider(config(&fake.base_url, api_key()));
    let refused = provider.complete(ask("x")).await.expect("a reply");
    assert_eq!(refused.stop_reason.as_deref(), Some("refusal"));
    assert!(refused.content.is_empty());
    let cut = provider.complete(ask("x")).await.expect("a reply");
    assert_eq!(cut.stop_reason.as_deref(), Some("max_tokens"));
    assert_eq!(text_of(&cut.content), vec!["The first"]);
    let paused = provider.complete(ask("x")).await.expect("a reply");
    assert_eq!(paused.stop_reason.as_deref(), Some("pause_turn"));
    assert_eq!(text_of(&paused.content), vec!["Searching"]);
}
