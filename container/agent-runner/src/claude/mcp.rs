//! talon's host actions offered to Claude Code as an MCP server.
//!
//! Claude Code starts MCP servers as stdio children; talon's is
//! `agent-runner mcp-bridge <port>` ([`bridge`]), which only joins its
//! stdio to a loopback connection of this runner. The runner answers the
//! JSON-RPC ([`answer`]): `initialize`, `ping`, `tools/list` (the same host
//! tools talon's own runtime offers, with the same schemas) and `tools/call`,
//! which becomes a `HostRequest`. The host authorises each one from the
//! container's identity, exactly as for the talon runtime; nothing in the
//! call can widen it.
//!
//! The MCP surface used is these four methods over newline-delimited
//! JSON-RPC, so it is written here on std rather than pulling an async
//! runtime into a static runner that has none (see the README).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{mpsc, Arc};

use serde_json::{json, Value};

use super::Shared;
use crate::tools::{self, Dispatch};
use crate::wire::{HostAction, HostResult, RunnerToHost};

/// The server's name: Claude Code shows its tools as `mcp__talon__<tool>`.
pub const SERVER_NAME: &str = "talon";
/// Offered when the client names no protocol version.
const DEFAULT_PROTOCOL: &str = "2025-06-18";
/// The longest JSON-RPC line read.
const MAX_LINE: usize = 1024 * 1024;

fn success(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn failure(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn tool_result(text: &str, is_error: bool) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": is_error})
}

/// The answer to one JSON-RPC message, or `None` for a notification.
/// `call_host` performs a host action and waits for the host's result.
pub fn answer(
    message: &Value,
    call_host: &mut dyn FnMut(HostAction) -> HostResult,
) -> Option<Value> {
    let id = message.get("id")?.clone();
    let params = &message["params"];
    let reply = match message["method"].as_str().unwrap_or_default() {
        "initialize" => success(
            &id,
            json!({
                "protocolVersion": params["protocolVersion"].as_str().unwrap_or(DEFAULT_PROTOCOL),
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION")},
            }),
        ),
        "ping" => success(&id, json!({})),
        "tools/list" => {
            let list: Vec<Value> = tools::host_specs()
                .into_iter()
                .map(|spec| {
                    json!({
                        "name": spec.name,
                        "description": spec.description,
                        "inputSchema": spec.input_schema,
                    })
                })
                .collect();
            success(&id, json!({"tools": list}))
        }
        "tools/call" => {
            let name = params["name"].as_str().unwrap_or_default();
            let arguments = params.get("arguments").cloned().unwrap_or(Value::Null);
            match tools::dispatch(name, &arguments) {
                Dispatch::Host(action) => match call_host(action) {
                    HostResult::Ok { content } => success(&id, tool_result(&content, false)),
                    HostResult::Error { message } => success(&id, tool_result(&message, true)),
                },
                Dispatch::Refused(output) => success(&id, tool_result(&output.content, true)),
                // Shell and file tools are Claude Code's own; not offered here.
                Dispatch::Local => failure(&id, -32602, &format!("unknown tool `{name}`")),
            }
        }
        other => failure(&id, -32601, &format!("method not found: {other}")),
    };
    Some(reply)
}

/// Serves MCP connections until the process exits.
pub fn serve(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let own = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("mcp-connection".into())
            .spawn(move || {
                if let Err(error) = handle(stream, &own) {
                    own.note(&format!("an MCP connection failed: {error}"));
                }
            });
        if spawned.is_err() {
            shared.note("cannot start a thread for an MCP connection");
        }
    }
}

fn handle(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(());
        }
        if line.len() > MAX_LINE && line.last() != Some(&b'\n') {
            let reply = failure(&Value::Null, -32600, "request too long");
            writeln!(writer, "{reply}")?;
            // The rest of that line cannot be resynchronised: hang up.
            return Ok(());
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let reply = match serde_json::from_slice::<Value>(text) {
            Ok(message) => answer(&message, &mut |action| shared.call_host(action)),
            Err(error) => Some(failure(
                &Value::Null,
                -32700,
                &format!("parse error: {error}"),
            )),
        };
        if let Some(reply) = reply {
            writeln!(writer, "{reply}")?;
            writer.flush()?;
        }
    }
}

impl Shared {
    /// Sends one host request and waits for its answer.
    pub fn call_host(&self, action: HostAction) -> HostResult {
        let (tx, rx) = mpsc::channel();
        let request_id = self.register_host(tx);
        if !self.emit(&RunnerToHost::HostRequest { request_id, action }) {
            self.forget_host(request_id);
            return HostResult::Error {
                message: "the host cannot be reached".into(),
            };
        }
        let result = rx.recv().unwrap_or(HostResult::Error {
            message: "the host went away before answering".into(),
        });
        self.forget_host(request_id);
        result
    }
}

/// `agent-runner mcp-bridge <port>`: joins stdin/stdout to the runner's MCP
/// listener on the loopback.
pub fn bridge(port: &str) -> u8 {
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("agent-runner mcp-bridge: {port:?} is not a port");
        return 2;
    };
    let stream = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(stream) => stream,
        Err(error) => {
            eprintln!("agent-runner mcp-bridge: cannot reach the runner: {error}");
            return 1;
        }
    };
    let Ok(mut upstream) = stream.try_clone() else {
        return 1;
    };
    let _ = std::thread::Builder::new().spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut upstream);
        let _ = upstream.shutdown(std::net::Shutdown::Write);
    });
    let mut downstream = stream;
    let _ = io::copy(&mut downstream, &mut io::stdout().lock());
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_host(_: HostAction) -> HostResult {
        panic!("no host call expected")
    }

    #[test]
    fn initialize_echoes_the_protocol_and_offers_tools() {
        let reply = answer(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"protocolVersion": "2025-03-26", "capabilities": {}}}),
            &mut no_host,
        )
        .unwrap();
        assert_eq!(reply["id"], 1);
        assert_eq!(reply["result"]["protocolVersion"], "2025-03-26");
        assert!(reply["result"]["capabilities"]["tools"].is_object());
        assert_eq!(reply["result"]["serverInfo"]["name"], "talon");
    }

    #[test]
    fn notifications_get_no_answer() {
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert_eq!(answer(&note, &mut no_host), None);
    }

    #[test]
    fn the_host_tools_are_listed_and_the_local_ones_are_not() {
        let reply = answer(
            &json!({"jsonrpc": "2.0", "id": "a", "method": "tools/list"}),
            &mut no_host,
        )
        .unwrap();
        let names: Vec<&str> = reply["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"send_message"));
        assert!(names.contains(&"schedule_task"));
        assert!(!names.contains(&"bash"));
        assert!(reply["result"]["tools"][0]["inputSchema"].is_object());
    }

    #[test]
    fn a_call_becomes_a_host_action_and_its_result_the_tool_result() {
        let mut seen = Vec::new();
        let mut host = |action: HostAction| {
            seen.push(action);
            HostResult::Ok {
                content: "sent".into(),
            }
        };
        let reply = answer(
            &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                    "params": {"name": "send_message", "arguments": {"text": "hi"}}}),
            &mut host,
        )
        .unwrap();
        assert_eq!(reply["result"]["content"][0]["text"], "sent");
        assert_eq!(reply["result"]["isError"], false);
        assert_eq!(
            seen,
            vec![HostAction::SendMessage {
                chat_id: None,
                text: "hi".into()
            }]
        );
    }

    #[test]
    fn refusals_and_bad_calls_are_errors_not_host_requests() {
        let mut host = |_: HostAction| HostResult::Error {
            message: "not allowed".into(),
        };
        let refused = answer(
            &json!({"id": 1, "method": "tools/call",
                    "params": {"name": "register_group", "arguments": {"chat_id": "x", "name": "n", "folder": "f"}}}),
            &mut host,
        )
        .unwrap();
        assert_eq!(refused["result"]["isError"], true);
        assert_eq!(refused["result"]["content"][0]["text"], "not allowed");
        let bad = answer(
            &json!({"id": 2, "method": "tools/call",
                    "params": {"name": "send_message", "arguments": {"nope": 1}}}),
            &mut no_host,
        )
        .unwrap();
        assert_eq!(bad["result"]["isError"], true);
        let local = answer(
            &json!({"id": 3, "method": "tools/call", "params": {"name": "bash", "arguments": {}}}),
            &mut no_host,
        )
        .unwrap();
        assert_eq!(local["error"]["code"], -32602);
        let unknown = answer(&json!({"id": 4, "method": "resources/list"}), &mut no_host).unwrap();
        assert_eq!(unknown["error"]["code"], -32601);
    }
}
