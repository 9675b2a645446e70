//! The OpenAI-compatible provider against the fake chat-completions server:
//! the request shape, the tool-call round trip, and the same retry and
//! failure classes as the Anthropic provider.

#[path = "support/fake_openai.rs"]
mod fake_openai;

use std::time::Duration;

use fake_openai::{FakeOpenAi, Reply};
use serde_json::json;
use talon::messages::wire::{ChatMessage, ContentBlock, Role, ToolSpec};
use talon::provider::{
    ErrorKind, ModelRequest, OpenAiConfig, OpenAiProvider, Provider, RetryPolicy,
};
use talon::secret::Secret;

const KEY: &str = "copilot-canary-key";

fn provider(base_url: &str, api_key: Option<&str>) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiConfig {
        base_url: base_url.to_string(),
        api_key: api_key.map(Secret::new),
        model: "gpt-4o-mini".into(),
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_retries: 2,
            base: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            ..RetryPolicy::default()
        },
        api_key_env: "COPILOT_API_KEY".into(),
    })
    .expect("valid provider config")
}

fn ask(text: &str) -> ModelRequest {
    ModelRequest {
        system: "You are Talon.".into(),
        messages: vec![ChatMessage {
            role: Role::User,
            content: vec![ContentBlock::Text { text: text.into() }],
        }],
        max_tokens: 128,
        tools: Vec::new(),
    }
}

#[tokio::test]
async fn a_text_reply_is_mapped_and_the_request_has_the_chat_completions_shape() {
    let fake = FakeOpenAi::start_with_key(vec![Reply::text("hello")], KEY).await;
    let reply = provider(&fake.base_url, Some(KEY))
        .complete(ask("hi"))
        .await
        .expect("a reply");
    assert_eq!(reply.id, "chatcmpl-1");
    assert_eq!(
        reply.content,
        vec![ContentBlock::Text {
            text: "hello".into()
        }]
    );
    assert_eq!(reply.stop_reason.as_deref(), Some("end_turn"));
    assert!(reply.input_tokens > 0 && reply.output_tokens > 0);

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(requests[0].header("content-type"), Some("application/json"));
    assert_eq!(
        requests[0].header("authorization"),
        Some(&*format!("Bearer {KEY}"))
    );
    assert_eq!(
        requests[0].body,
        json!({
            "model": "gpt-4o-mini",
            "max_tokens": 128,
            "messages": [
                {"role": "system", "content": "You are Talon."},
                {"role": "user", "content": "hi"},
            ],
        })
    );
}

#[tokio::test]
async fn without_a_key_no_authorization_header_is_sent() {
    let fake = FakeOpenAi::start(Vec::new()).await;
    let reply = provider(&format!("{}/v1/", fake.base_url), None)
        .complete(ask("ping"))
        .await
        .expect("a reply");
    assert_eq!(
        reply.content,
        vec![ContentBlock::Text {
            text: "echo: ping".into()
        }]
    );
    let requests = fake.requests();
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(requests[0].header("authorization"), None);
}

#[tokio::test]
async fn a_tool_call_round_trip_maps_calls_and_results() {
    let fake = FakeOpenAi::start(vec![Reply::tool_call(
        "call_1",
        "bash",
        json!({"command": "ls"}),
    )])
    .await;
    let provider = provider(&fake.base_url, None);
    let mut request = ask("list files");
    request.tools = vec![ToolSpec {
        name: "bash".into(),
        description: "Run a shell command".into(),
        input_schema: json!({"type": "object", "properties": {"command": {"type": "string"}}}),
    }];

    let first = provider.complete(request.clone()).await.expect("tool call");
    assert_eq!(first.stop_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        first.content,
        vec![ContentBlock::ToolUse {
            id: "call_1".into(),
            name: "bash".into(),
            input: json!({"command": "ls"}),
        }]
    );

    request.messages.push(ChatMessage {
        role: Role::Assistant,
        content: first.content,
    });
    request.messages.push(ChatMessage {
        role: Role::User,
        content: vec![ContentBlock::ToolResult {
            tool_use_id: "call_1".into(),
            content: "notes.txt".into(),
            is_error: false,
        }],
    });
    fake.push(Reply::text("one file: notes.txt"));
    let second = provider.complete(request).await.expect("final answer");
    assert_eq!(
        second.content,
        vec![ContentBlock::Text {
            text: "one file: notes.txt".into()
        }]
    );
    assert_eq!(second.stop_reason.as_deref(), Some("end_turn"));

    let requests = fake.requests();
    assert_eq!(
        requests[0].body["tools"],
        json!([{"type": "function", "function": {
            "name": "bash", "description": "Run a shell command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}])
    );
    let sent = &requests[1].body["messages"];
    assert_eq!(
        sent[2],
        json!({"role": "assistant", "content": null, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}}]})
    );
    assert_eq!(
        sent[3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "notes.txt"})
    );
}

#[tokio::test]
async fn a_429_is_retried_and_then_succeeds() {
    let fake = FakeOpenAi::start(vec![Reply::rate_limited(Some("0")), Reply::text("ok")]).await;
    let reply = provider(&fake.base_url, None)
        .complete(ask("hi"))
        .await
        .expect("a reply after one retry");
    assert_eq!(
        reply.content,
        vec![ContentBlock::Text { text: "ok".into() }]
    );
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn endless_5xx_is_temporary_after_max_retries_plus_one_requests() {
    let fake = FakeOpenAi::start(vec![
        Reply::status(503, "busy"),
        Reply::status(503, "busy"),
        Reply::status(503, "busy"),
    ])
    .await;
    let failure = provider(&fake.base_url, None)
        .complete(ask("hi"))
        .await
        .expect_err("fails");
    assert_eq!(failure.kind, ErrorKind::Temporary);
    assert_eq!(fake.request_count(), 3);
    assert!(
        failure.message.contains("after 2 retries"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn a_401_is_auth_after_one_request_and_names_the_key_variable_not_the_key() {
    let fake = FakeOpenAi::start_with_key(Vec::new(), "the-right-key").await;
    let failure = provider(&fake.base_url, Some(KEY))
        .complete(ask("hi"))
        .await
        .expect_err("refused");
    assert_eq!(failure.kind, ErrorKind::Auth);
    assert_eq!(fake.request_count(), 1);
    assert!(
        failure.message.contains("COPILOT_API_KEY"),
        "{}",
        failure.message
    );
    assert!(!failure.message.contains(KEY), "{}", failure.message);
}

#[tokio::test]
async fn a_400_is_permanent_with_the_servers_reason() {
    let fake = FakeOpenAi::start(vec![Reply::status(400, "model not found")]).await;
    let failure = provider(&fake.base_url, None)
        .complete(ask("hi"))
        .await
        .expect_err("refused");
    assert_eq!(failure.kind, ErrorKind::Permanent);
    assert_eq!(fake.request_count(), 1);
    assert!(
        failure.message.contains("model not found"),
        "{}",
        failure.message
    );
}

/// A 200 chat-completions body with one choice.
fn completion(message: serde_json::Value, finish_reason: &str) -> Reply {
    Reply::Raw {
        code: 200,
        body: json!({"id": "chatcmpl-raw", "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
    }
}

#[tokio::test]
async fn unreadable_arguments_become_a_marked_object_and_refusals_cuts_and_filters_a_stop_reason() {
    let fake = FakeOpenAi::start(vec![
        completion(
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "bash", "arguments": "{\"command\": \"ls"}}]}),
            "tool_calls",
        ),
        completion(
            json!({"role": "assistant", "content": null, "refusal": "I can't help with that."}),
            "stop",
        ),
        completion(
            json!({"role": "assistant", "content": "The first"}),
            "length",
        ),
        completion(
            json!({"role": "assistant", "content": ""}),
            "content_filter",
        ),
    ])
    .await;
    let provider = provider(&fake.base_url, None);
    let call = provider.complete(ask("x")).await.expect("a reply");
    assert_eq!(call.stop_reason.as_deref(), Some("tool_use"));
    match call.content.as_slice() {
        [ContentBlock::ToolUse { id, input, .. }] => {
            assert_eq!(id, "call_1");
            let why = input[talon::messages::wire::INVALID_TOOL_INPUT_KEY]
                .as_str()
                .unwrap_or_default();
            assert!(why.contains("not valid JSON"), "{input}");
        }
        other => panic!("expected one tool call, got {other:?}"),
    }
    let refused = provider.complete(ask("x")).await.expect("a reply");
    assert_eq!(refused.stop_reason.as_deref(), Some("refusal"));
    assert!(refused.content.is_empty(), "{:?}", refused.content);
    let cut = provider.complete(ask("x")).await.expect("a reply");
    assert_eq!(cut.stop_reason.as_deref(), Some("max_tokens"));
    assert_eq!(
        cut.content,
        vec![ContentBlock::Text {
            text: "The first".into()
        }]
    );
    let filtered = provider.complete(ask("x")).await.expect("a reply");
    assert_eq!(filtered.stop_reason.as_deref(), Some("content_filter"));
    assert!(filtered.content.is_empty());
}
