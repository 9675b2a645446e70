//! The loopback HTTP listener Claude Code takes for the Anthropic API
//! (`ANTHROPIC_BASE_URL`). It exists under `--network none`: the container's
//! loopback is its own. Each request is read whole (bounded), carried to the
//! host as an `ApiRequest`, and the host's answer is written back as it
//! streams in. One request per connection (`connection: close`), so a
//! response needs neither a length nor chunked framing.
//!
//! Nothing is decided here about what is allowed: the host checks the path
//! and puts the real credential on; this side only refuses what it cannot
//! carry (an unreadable request, a body too big for one protocol line).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::{ApiPart, Shared};
use crate::wire::{ApiRequest, RunnerToHost};

/// The longest request head read.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The largest body carried: JSON-escaped it still fits one protocol line.
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;
/// Connections served at once; more get a 503 at once (the host's own
/// in-flight bound is what really limits the container).
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_HEADERS: usize = 64;

/// A request as read off a connection.
#[derive(Debug, PartialEq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub content_length: usize,
}

/// An answer given here, without asking the host.
#[derive(Debug, PartialEq)]
pub struct LocalRefusal {
    pub status: u16,
    pub message: String,
}

fn refusal(status: u16, message: impl Into<String>) -> LocalRefusal {
    LocalRefusal {
        status,
        message: message.into(),
    }
}

/// Parses a complete request head (through the blank line).
pub fn parse_head(bytes: &[u8]) -> Result<RequestHead, LocalRefusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(refusal(400, "incomplete request head")),
        Err(error) => return Err(refusal(400, format!("unreadable request: {error}"))),
    }
    let method = request.method.unwrap_or_default().to_string();
    let path = request.path.unwrap_or_default().to_string();
    let mut content_length = 0usize;
    let mut carried = Vec::new();
    for header in request.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(header.value).into_owned();
        match name.as_str() {
            "content-length" => {
                content_length = value
                    .trim()
                    .parse()
                    .map_err(|_| refusal(400, "unreadable content-length"))?;
            }
            "transfer-encoding" => {
                return Err(refusal(411, "a chunked request body is not supported"))
            }
            _ => carried.push((name, value)),
        }
    }
    if content_length > MAX_BODY_BYTES {
        return Err(refusal(
            413,
            format!(
                "the request body is {content_length} bytes; at most {MAX_BODY_BYTES} are carried"
            ),
        ));
    }
    Ok(RequestHead {
        method,
        path,
        headers: carried,
        content_length,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        529 => "Overloaded",
        _ => "Status",
    }
}

/// The response head: the host's headers minus framing, then `connection: close`.
pub fn response_head(status: u16, headers: &[(String, String)]) -> String {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let framing = matches!(
            lower.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        );
        let clean = |s: &str| !s.is_empty() && !s.contains(['\r', '\n']);
        if !framing && clean(name) && !value.contains(['\r', '\n']) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("connection: close\r\n\r\n");
    head
}

/// An Anthropic-shaped error body, so Claude Code shows the reason.
pub fn error_body(status: u16, message: &str) -> String {
    let kind = crate::wire::api_error_type(status);
    serde_json::json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
}

fn write_refusal(stream: &mut TcpStream, refused: &LocalRefusal) -> io::Result<()> {
    let body = error_body(refused.status, &refused.message);
    let headers = [("content-type".to_string(), "application/json".to_string())];
    stream.write_all(response_head(refused.status, &headers).as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Reads through the blank line after the head; returns the head and any
/// body bytes read with it.
fn read_head(stream: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), LocalRefusal> {
    let mut data = Vec::with_capacity(8 * 1024);
    let mut chunk = [0u8; 8 * 1024];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = data.split_off(end + 4);
            return Ok((data, body));
        }
        if data.len() > MAX_HEAD_BYTES {
            return Err(refusal(431, "the request head is too long"));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(refusal(400, "the connection closed mid-request")),
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(refusal(400, format!("reading the request failed: {e}"))),
        }
    }
}

fn read_request(stream: &mut TcpStream) -> Result<ApiRequest, LocalRefusal> {
    let (head, mut body) = read_head(stream)?;
    let head = parse_head(&head)?;
    if body.len() > head.content_length {
        body.truncate(head.content_length);
    }
    let missing = head.content_length - body.len();
    if missing > 0 {
        let mut rest = vec![0u8; missing];
        stream
            .read_exact(&mut rest)
            .map_err(|e| refusal(400, format!("reading the request body failed: {e}")))?;
        body.extend_from_slice(&rest);
    }
    let body =
        String::from_utf8(body).map_err(|_| refusal(400, "the request body is not UTF-8 text"))?;
    Ok(ApiRequest {
        method: head.method,
        path: head.path,
        headers: head.headers,
        body,
    })
}

/// Serves the listener until the process exits.
pub fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            let _ = write_refusal(
                &mut stream,
                &refusal(503, "too many API connections at once"),
            );
            continue;
        }
        let own = shared.clone();
        let open = open.clone();
        let spawned = std::thread::Builder::new()
            .name("api-connection".into())
            .spawn(move || {
                if let Err(error) = handle(stream, &own) {
                    own.note(&format!("an API connection failed: {error}"));
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.note("cannot start a thread for an API connection");
        }
    }
}

fn handle(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let request = match read_request(&mut stream) {
        Ok(request) => request,
        Err(refused) => return write_refusal(&mut stream, &refused),
    };
    stream.set_read_timeout(None)?;
    shared.touch();
    let (tx, rx) = mpsc::channel();
    let request_id = shared.register_api(tx);
    let sent = shared.emit(&RunnerToHost::ApiRequest {
        request_id,
        request,
    });
    if !sent {
        shared.forget_api(request_id);
        return write_refusal(&mut stream, &refusal(502, "the host cannot be reached"));
    }
    let outcome = stream_answer(&mut stream, &rx);
    shared.forget_api(request_id);
    outcome
}

/// Writes the host's answer as it arrives: head, chunks, then close.
fn stream_answer(stream: &mut TcpStream, rx: &mpsc::Receiver<ApiPart>) -> io::Result<()> {
    let mut head_written = false;
    loop {
        match rx.recv() {
            Ok(ApiPart::Head { status, headers }) if !head_written => {
                head_written = true;
                stream.write_all(response_head(status, &headers).as_bytes())?;
            }
            Ok(ApiPart::Head { .. }) => {}
            Ok(ApiPart::Chunk(data)) if head_written => {
                stream.write_all(data.as_bytes())?;
                stream.flush()?;
            }
            Ok(ApiPart::Chunk(_)) => {}
            Ok(ApiPart::End(error)) => {
                if !head_written {
                    let message = error.unwrap_or_else(|| "the host sent no answer".into());
                    return write_refusal(stream, &refusal(502, message));
                }
                // A cut stream ends early; the client sees it incomplete.
                return stream.flush();
            }
            Err(_) => {
                if !head_written {
                    return write_refusal(stream, &refusal(502, "the host went away"));
                }
                return stream.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_messages_request_head_is_read_with_its_headers() {
        let head = b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: 127.0.0.1:1\r\nX-Api-Key: placeholder\r\nContent-Length: 2\r\n\r\n";
        let parsed = parse_head(head).unwrap();
        assert_eq!(parsed.method, "POST");
        assert_eq!(parsed.path, "/v1/messages?beta=true");
        assert_eq!(parsed.content_length, 2);
        assert!(parsed
            .headers
            .contains(&("x-api-key".into(), "placeholder".into())));
        assert!(!parsed.headers.iter().any(|(n, _)| n == "content-length"));
    }

    #[test]
    fn what_cannot_be_carried_is_refused_here() {
        let chunked = b"POST /v1/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_head(chunked).unwrap_err().status, 411);
        let huge = format!(
            "POST /v1/messages HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert_eq!(parse_head(huge.as_bytes()).unwrap_err().status, 413);
        assert_eq!(
            parse_head(b"\x00\x01garbage\r\n\r\n").unwrap_err().status,
            400
        );
        let bad_length = b"POST / HTTP/1.1\r\nContent-Length: lots\r\n\r\n";
        assert_eq!(parse_head(bad_length).unwrap_err().status, 400);
    }

    #[test]
    fn the_response_head_drops_framing_and_header_injection() {
        let head = response_head(
            200,
            &[
                ("content-type".into(), "text/event-stream".into()),
                ("content-length".into(), "5".into()),
                ("x-evil".into(), "a\r\nset-cookie: b".into()),
            ],
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn error_bodies_have_the_api_shape() {
        let body: serde_json::Value = serde_json::from_str(&error_body(413, "too big")).unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "request_too_large");
        assert_eq!(body["error"]["message"], "too big");
    }
}
