//! The local socket channel: local scripts and bridges talk to talon over a
//! Unix socket at `<home>/data/talon.sock` (mode 0600), in JSON lines
//! ([`crate::messages::socket`]). Its chats are `sock:<name>`.
//!
//! Three parts. The *accept loop* and, per client, a *reader* and a *writer*
//! task run outside the actor's handler, so reading never waits on delivery
//! and one slow client cannot stall the others for long: readers turn lines
//! into inbound messages for the router, writers put lines on the wire and
//! say whether they got there. They end with the actor (a restarted actor
//! listens afresh; clients reconnect and resend what was not answered, which
//! the store recognises as repeats). The *actor* owns the set of clients:
//! it writes each outbox row to every connected client and marks it sent
//! only once at least one client took it, so with nobody connected a reply
//! stays in the outbox, and a client that connects later is handed every
//! unsent reply of a socket chat.
//!
//! The actor's messages are the shared channel contract ([`ChannelMsg`]),
//! which has no word for "a client connected"; new clients therefore reach
//! the actor on a side queue it drains before handling any message, and the
//! accept loop follows each arrival with a `Deliver` of the unsent rows.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::channels::{submit_to_router, RecentKeys};
use crate::lines::{Frame, LineSplitter};
use crate::messages::channel::ChannelMsg;
use crate::messages::socket::{
    is_socket_chat, parse_client_line, to_inbound, TalonLine, MAX_CLIENT_LINE_BYTES,
};
use crate::paths::Paths;
use crate::store::Store;

/// The socket's place in a talon home.
pub fn socket_path(paths: &Paths) -> PathBuf {
    paths.data().join("talon.sock")
}

/// How long one line may take to reach a client before it counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the actor waits for a writer's answer (it may have lines queued
/// before ours, each bounded by [`WRITE_TIMEOUT`]).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines waiting for one client; beyond this it is too far behind to feed.
const CLIENT_QUEUE: usize = 1024;
/// Outbox ids remembered as written, so a row handed over twice (by its
/// queue and by a connect's backlog) is written once.
const RECENT_IDS: usize = 4096;

#[derive(Clone)]
pub struct SocketArgs {
    pub store: Store,
    /// Where to listen; see [`socket_path`].
    pub path: PathBuf,
}

/// One line for one client; `ack` learns whether it was written and flushed.
struct Outgoing {
    line: String,
    ack: Option<oneshot::Sender<bool>>,
}

/// The actor's handle on a connected client.
struct Client {
    id: u64,
    outgoing: mpsc::Sender<Outgoing>,
}

/// Aborts its task when dropped: the listener dies with the actor's state,
/// however the actor ends.
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct SocketChannel;

pub struct SocketState {
    store: Store,
    path: PathBuf,
    /// The socket file we bound (device, inode), removed at stop if still ours.
    bound: Option<(u64, u64)>,
    clients: Vec<Client>,
    arrivals: mpsc::UnboundedReceiver<Client>,
    accepted: Arc<AtomicU64>,
    /// Outbox ids already written in this process.
    recent: RecentKeys<i64>,
    delivered: u64,
    /// Deliveries that found no client to take them (left in the outbox).
    held: u64,
    _listener: TaskGuard,
}

impl SocketState {
    /// Takes in the clients that connected since the last message and
    /// forgets those whose writer has ended.
    fn refresh_clients(&mut self) {
        while let Ok(client) = self.arrivals.try_recv() {
            self.clients.push(client);
        }
        self.clients.retain(|c| !c.outgoing.is_closed());
    }

    /// Writes `line` to every client; with `confirm`, waits for each writer
    /// and returns how many wrote and flushed it.
    async fn broadcast(&mut self, line: String, confirm: bool) -> usize {
        let mut waiting = Vec::new();
        for client in &self.clients {
            let (ack, answer) = if confirm {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let outgoing = Outgoing {
                line: line.clone(),
                ack,
            };
            match client.outgoing.try_send(outgoing) {
                Ok(()) => {
                    if let Some(answer) = answer {
                        waiting.push((client.id, answer));
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        client = client.id,
                        "socket client is far behind; line skipped"
                    );
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        let answers =
            futures::future::join_all(waiting.into_iter().map(|(id, answer)| async move {
                let written = matches!(
                    tokio::time::timeout(ACK_TIMEOUT, answer).await,
                    Ok(Ok(true))
                );
                if !written {
                    tracing::debug!(client = id, "a line did not reach a socket client");
                }
                written
            }))
            .await;
        self.clients.retain(|c| !c.outgoing.is_closed());
        answers.into_iter().filter(|written| *written).count()
    }
}

impl Actor for SocketChannel {
    type Msg = ChannelMsg;
    type State = SocketState;
    type Arguments = SocketArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SocketArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (listener, bound) = bind(&args.path)?;
        let (arrive, arrivals) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            myself.clone(),
            arrive,
            args.store.clone(),
            accepted.clone(),
        ));
        crate::dump::register_inspectable(&myself, "channel", ChannelMsg::Inspect);
        tracing::info!(path = %args.path.display(), "socket channel listening");
        Ok(SocketState {
            store: args.store,
            path: args.path,
            bound,
            clients: Vec::new(),
            arrivals,
            accepted,
            recent: RecentKeys::new(RECENT_IDS),
            delivered: 0,
            held: 0,
            _listener: TaskGuard(task),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.refresh_clients();
        match message {
            ChannelMsg::Deliver(row) => {
                if state.recent.contains(&row.id) {
                    return Ok(()); // written already (queue and backlog both sent it)
                }
                let line = TalonLine::reply(&row).to_line();
                if state.broadcast(line, true).await > 0 {
                    state.store.mark_sent(row.id)?;
                    state.recent.first_time(row.id);
                    state.delivered += 1;
                } else {
                    state.held += 1;
                    tracing::debug!(chat = %row.chat_id, outbox_id = row.id,
                        "no socket client took the reply; it stays in the outbox");
                }
            }
            ChannelMsg::Settled {
                chat_id,
                through_seq,
            } => {
                if is_socket_chat(&chat_id) {
                    let line = TalonLine::Settled {
                        chat: chat_id,
                        through_seq,
                    }
                    .to_line();
                    state.broadcast(line, false).await;
                }
            }
            // No typing indicator, no platform connection.
            ChannelMsg::Working { .. } | ChannelMsg::Connection(_) => {}
            ChannelMsg::Inspect(reply) => {
                let _ = reply.send(json!({
                    "channel": "socket",
                    "path": state.path.display().to_string(),
                    "clients": state.clients.len(),
                    "connections_accepted": state.accepted.load(Ordering::Relaxed),
                    "delivered": state.delivered,
                    "held_for_no_client": state.held,
                }));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Only our own socket file: never one a successor has bound since.
        if state.bound.is_some() && file_id(&state.path) == state.bound {
            let _ = std::fs::remove_file(&state.path);
        }
        crate::dump::unregister(&myself.get_cell());
        Ok(())
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Binds the socket with mode 0600 from the first moment: it is bound under
/// a temporary name, restricted, then renamed over `path` (which also
/// replaces a stale socket left by a host that died).
fn bind(path: &Path) -> Result<(UnixListener, Option<(u64, u64)>), ActorProcessingErr> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "{} exists and is not a socket; move it away to use the socket channel",
                path.display()
            )
            .into());
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension(format!("sock.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)
        .map_err(|e| format!("cannot listen on {}: {e}", temporary.display()))?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(format!("cannot set up the socket {}: {e}", path.display()).into());
    }
    Ok((listener, file_id(path)))
}

/// Accepts clients until the actor's state drops this task; the clients'
/// tasks live in a set that is aborted with it, closing their connections.
async fn accept_loop(
    listener: UnixListener,
    actor: ActorRef<ChannelMsg>,
    arrive: mpsc::UnboundedSender<Client>,
    store: Store,
    accepted: Arc<AtomicU64>,
) {
    let mut tasks = JoinSet::new();
    let mut next_id: u64 = 0;
    loop {
        let accept = tokio::select! {
            accept = listener.accept() => accept,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let stream = match accept {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "socket channel cannot accept a client");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        accepted.fetch_add(1, Ordering::Relaxed);
        let (reader, writer) = stream.into_split();
        let (outgoing, queue) = mpsc::channel(CLIENT_QUEUE);
        tasks.spawn(write_lines(writer, queue));
        tasks.spawn(read_lines(reader, outgoing.clone(), next_id));
        let client = Client {
            id: next_id,
            outgoing,
        };
        if arrive.send(client).is_err() {
            return; // the actor is gone
        }
        tracing::debug!(client = next_id, "socket client connected");
        // The newcomer gets every reply that found nobody before it. The
        // client is queued first, so the actor sees it before these rows.
        match store.unsent_outbox() {
            Ok(rows) => {
                for row in rows.into_iter().filter(|r| is_socket_chat(&r.chat_id)) {
                    if actor.cast(ChannelMsg::Deliver(row)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the outbox for a socket client"),
        }
    }
}

/// Puts lines on the wire, one at a time, and answers each `ack`. The first
/// failed or stuck write ends the task, which closes our side of the
/// connection and tells the actor this client is gone.
async fn write_lines(mut writer: OwnedWriteHalf, mut queue: mpsc::Receiver<Outgoing>) {
    while let Some(outgoing) = queue.recv().await {
        let write = async {
            writer.write_all(outgoing.line.as_bytes()).await?;
            writer.flush().await
        };
        let written = matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())));
        if let Some(ack) = outgoing.ack {
            let _ = ack.send(written);
        }
        if !written {
            return;
        }
    }
}

/// Reads a client's lines: each valid message goes to the router, anything
/// else is answered with an `error` line.
async fn read_lines(mut reader: OwnedReadHalf, replies: mpsc::Sender<Outgoing>, client: u64) {
    let mut lines = LineSplitter::new(MAX_CLIENT_LINE_BYTES);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(client, error = %e, "socket client read failed");
                break;
            }
        };
        for frame in lines.push(&chunk[..read]) {
            take_frame(frame, &replies).await;
        }
    }
    // A last line without its newline still counts.
    if let Some(frame) = lines.finish() {
        take_frame(frame, &replies).await;
    }
    tracing::debug!(client, "socket client stopped sending");
}

async fn take_frame(frame: Frame, replies: &mpsc::Sender<Outgoing>) {
    let refusal = match frame {
        Frame::TooLong(length) => format!(
            "a line of {length} bytes is longer than the {MAX_CLIENT_LINE_BYTES} allowed; ignored"
        ),
        Frame::Line(bytes) => {
            let line = bytes.strip_suffix(b"\r").unwrap_or(&bytes);
            if line.iter().all(u8::is_ascii_whitespace) {
                return; // blank lines are keep-alives
            }
            match parse_client_line(line) {
                Ok(message) => {
                    submit_to_router(to_inbound(message, crate::store::now_millis())).await;
                    return;
                }
                Err(refusal) => refusal,
            }
        }
    };
    let error = Outgoing {
        line: TalonLine::error(refusal).to_line(),
        ack: None,
    };
    // A client too far behind to take its own error line loses it.
    let _ = replies.try_send(error);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_is_private_and_a_stale_one_is_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("talon.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // A socket file left by a host that died: nobody listens on it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(std::os::unix::net::UnixStream::connect(&path).is_err());
        let (listener, bound) = bind(&path).unwrap();
        assert_eq!(bound, file_id(&path));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        accepted.unwrap();
        connected.unwrap();
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("talon.sock")]);
    }

    async fn read_json(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<OwnedReadHalf>>,
    ) -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("an open connection");
        serde_json::from_str(&line).unwrap()
    }

    async fn inspect(actor: &ActorRef<ChannelMsg>) -> serde_json::Value {
        // Also waits until every message cast before it has been handled.
        ractor::call!(actor, ChannelMsg::Inspect).unwrap()
    }

    #[tokio::test]
    async fn rows_are_marked_sent_only_once_a_client_took_them() {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("talon.sock");
        let store = Store::open_in_memory().unwrap();
        let args = SocketArgs {
            store: store.clone(),
            path: path.clone(),
        };
        let name = format!("test-socket-{}", uuid::Uuid::new_v4());
        let (actor, handle) = Actor::spawn(Some(name), SocketChannel, args).await.unwrap();

        // Nobody connected: the row stays owed.
        let early = store.record_notice("sock:a", "a", "early").unwrap();
        actor.cast(ChannelMsg::Deliver(early.clone())).unwrap();
        assert_eq!(inspect(&actor).await["held_for_no_client"], 1);
        assert_eq!(store.unsent_outbox().unwrap(), vec![early.clone()]);

        // A client connects and is handed it, then it counts as sent.
        let (reader, mut writer) = tokio::net::UnixStream::connect(&path)
            .await
            .unwrap()
            .into_split();
        let mut lines = tokio::io::BufReader::new(reader).lines();
        assert_eq!(
            read_json(&mut lines).await,
            json!({"type": "reply", "chat": "sock:a", "outbox_id": early.id,
                   "kind": "notice", "text": "early"})
        );
        let status = inspect(&actor).await;
        assert_eq!(status["clients"], 1, "{status}");
        assert_eq!(status["delivered"], 1, "{status}");
        assert!(store.unsent_outbox().unwrap().is_empty());
        // Handed over again (say by its queue), it is not written twice.
        actor.cast(ChannelMsg::Deliver(early.clone())).unwrap();

        // Replies and settled lines go out as they come.
        let reply = store
            .record_reply("sock:a", "a", "answer", None, 0)
            .unwrap();
        actor.cast(ChannelMsg::Deliver(reply.clone())).unwrap();
        actor
            .cast(ChannelMsg::Settled {
                chat_id: "sock:a".into(),
                through_seq: 4,
            })
            .unwrap();
        assert_eq!(read_json(&mut lines).await["outbox_id"], reply.id);
        assert_eq!(
            read_json(&mut lines).await,
            json!({"type": "settled", "chat": "sock:a", "through_seq": 4})
        );

        // A refused line is answered on the same connection.
        writer.write_all(b"{\"type\":\"nope\"}\n").await.unwrap();
        let error = read_json(&mut lines).await;
        assert_eq!(error["type"], "error", "{error}");

        // The client leaves: the next row finds nobody and stays owed.
        drop((lines, writer));
        let late = store.record_notice("sock:a", "a", "late").unwrap();
        actor.cast(ChannelMsg::Deliver(late.clone())).unwrap();
        let status = inspect(&actor).await;
        assert_eq!(status["held_for_no_client"], 2, "{status}");
        assert_eq!(status["clients"], 0, "{status}");
        assert_eq!(store.unsent_outbox().unwrap(), vec![late]);

        // Stopping takes the socket file away.
        actor.stop(None);
        handle.await.unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("talon.sock");
        std::fs::write(&path, "precious").unwrap();
        let error = bind(&path).expect_err("refused").to_string();
        assert!(error.contains("not a socket"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }
}
