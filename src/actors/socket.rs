//! The local socket channel: local scripts and bridges talk to talon over a
//! Unix socket at `<home>/data/talon.sock` (mode 0600), in JSON lines
//! ([`crate::messages::socket`]). Its chats are `sock:<name>`.
//!
//! Three parts. The *accept loop* and, per client, a *reader* and a *writer*
//! task run outside the actor's handler, so reading never waits on delivery
//! and one slow client cannot stall the others for long: readers turn lines
//! into inbound messages for the router (and acks into marks in the store),
//! writers put lines on the wire and
//! end a connection whose writes fail. They end with the actor (a restarted
//! actor listens afresh; clients reconnect and resend what was not answered,
//! which the store recognises as repeats). The *actor* owns the set of
//! clients: it writes each outbox row to every connected client, once per
//! client.
//!
//! Delivery is at-least-once: a row is marked sent only when a client
//! acknowledges its `outbox_id` (the reader takes the ack straight to the
//! store, for `sock:` rows only). A written line proves nothing, since the
//! client may be gone before it reads it; so an unacknowledged row stays in
//! the outbox, and every client that connects is handed every unsent row of
//! a socket chat, again. Clients dedupe by `outbox_id`.
//!
//! The actor's messages are the shared channel contract ([`ChannelMsg`]),
//! which has no word for "a client connected"; new clients therefore reach
//! the actor on a side queue it drains before handling any message, and the
//! accept loop follows each arrival with a `Deliver` of the unsent rows.
//! Each client remembers (boundedly) which rows it was written, so a row
//! handed over twice (by its queue and by a backlog) reaches it once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::channels::{submit_to_router, RecentKeys};
use crate::lines::{Frame, LineSplitter};
use crate::messages::channel::ChannelMsg;
use crate::messages::socket::{
    is_socket_chat, parse_client_line, to_inbound, ClientLine, TalonLine, MAX_CLIENT_LINE_BYTES,
};
use crate::paths::Paths;
use crate::store::{OutboxRow, Store};

/// The socket's place in a talon home.
pub fn socket_path(paths: &Paths) -> PathBuf {
    paths.data().join("talon.sock")
}

/// How long one line may take to reach a client before it counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines waiting for one client; beyond this it is too far behind to feed.
const CLIENT_QUEUE: usize = 1024;
/// Outbox ids remembered per client as written to it. Past this the oldest
/// are forgotten: such a row may reach that client twice, which it dedupes.
/// A row is handed twice within seconds (its queue and a backlog), so a
/// thousand is ample, and keeps each client at about 40 KB.
const WRITTEN_IDS: usize = 1024;

#[derive(Clone)]
pub struct SocketArgs {
    pub store: Store,
    /// Where to listen; see [`socket_path`].
    pub path: PathBuf,
}

/// The actor's handle on a connected client.
struct Client {
    id: u64,
    outgoing: mpsc::Sender<String>,
    /// Outbox ids written to this client (bounded, see [`WRITTEN_IDS`]).
    written: RecentKeys<i64>,
}

/// What the readers count, for `Inspect`.
#[derive(Default)]
struct AckCounts {
    /// Acks that marked a row sent.
    acked: AtomicU64,
    /// Acks that named no unsent row of a socket chat.
    ignored: AtomicU64,
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
    path: PathBuf,
    /// The socket file we bound (device, inode), removed at stop if still ours.
    bound: Option<(u64, u64)>,
    clients: Vec<Client>,
    arrivals: mpsc::UnboundedReceiver<Client>,
    accepted: Arc<AtomicU64>,
    acks: Arc<AckCounts>,
    /// Reply lines handed to clients' writers (one per row and client).
    written: u64,
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

    /// Queues `row` for every client it was not written to yet; returns how
    /// many took it now and how many had it already.
    fn write_row(&mut self, row: &OutboxRow) -> (usize, usize) {
        let line = TalonLine::reply(row).to_line();
        let (mut took, mut had) = (0, 0);
        for client in &mut self.clients {
            if client.written.contains(&row.id) {
                had += 1;
                continue;
            }
            if offer(client, line.clone()) {
                client.written.first_time(row.id);
                took += 1;
            }
        }
        (took, had)
    }

    /// Queues a line that needs no acknowledgement for every client.
    fn write_to_all(&self, line: String) {
        for client in &self.clients {
            offer(client, line.clone());
        }
    }
}

/// Queues `line` for `client` without waiting; whether it was queued. A
/// client too far behind misses it (a reply stays unsent, for the next
/// client that connects).
fn offer(client: &Client, line: String) -> bool {
    match client.outgoing.try_send(line) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                client = client.id,
                "socket client is far behind; line skipped"
            );
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
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
        let acks = Arc::new(AckCounts::default());
        let task = tokio::spawn(accept_loop(
            listener,
            myself.clone(),
            arrive,
            args.store,
            accepted.clone(),
            acks.clone(),
        ));
        crate::dump::register_inspectable(&myself, "channel", ChannelMsg::Inspect);
        tracing::info!(path = %args.path.display(), "socket channel listening");
        Ok(SocketState {
            path: args.path,
            bound,
            clients: Vec::new(),
            arrivals,
            accepted,
            acks,
            written: 0,
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
            // Not marked sent here: that waits for a client's ack.
            ChannelMsg::Deliver(row) => {
                let (took, had) = state.write_row(&row);
                state.written += took as u64;
                if took + had == 0 {
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
                    state.write_to_all(line);
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
                    "replies_written": state.written,
                    "held_for_no_client": state.held,
                    "acked": state.acks.acked.load(Ordering::Relaxed),
                    "acks_ignored": state.acks.ignored.load(Ordering::Relaxed),
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
    acks: Arc<AckCounts>,
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
        let (hang_up, hung_up) = oneshot::channel();
        tasks.spawn(write_lines(writer, queue, hung_up));
        let reading = Reading {
            client: next_id,
            hung_up: hang_up,
            replies: outgoing.clone(),
            store: store.clone(),
            acks: acks.clone(),
        };
        tasks.spawn(read_lines(reader, reading));
        let client = Client {
            id: next_id,
            outgoing,
            written: RecentKeys::new(WRITTEN_IDS),
        };
        if arrive.send(client).is_err() {
            return; // the actor is gone
        }
        tracing::debug!(client = next_id, "socket client connected");
        // The newcomer gets every reply not acknowledged yet (the clients
        // that had one already are not written it again). The client is
        // queued first, so the actor sees it before these rows.
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

/// Puts lines on the wire, one at a time. The first failed or stuck write
/// ends the task, which closes our side of the connection and tells the
/// actor this client is gone; so does word from the reader that the client
/// hung up (`hung_up` fires), which would otherwise wait for the next write.
async fn write_lines(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::Receiver<String>,
    mut hung_up: oneshot::Receiver<()>,
) {
    let mut listening = true;
    loop {
        let line = tokio::select! {
            line = queue.recv() => match line {
                Some(line) => line,
                None => return,
            },
            word = &mut hung_up, if listening => {
                if word.is_ok() {
                    return;
                }
                listening = false; // the reader ended without word: keep writing
                continue;
            }
        };
        let write = async {
            writer.write_all(line.as_bytes()).await?;
            writer.flush().await
        };
        if !matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(()))) {
            return;
        }
    }
}

/// What one client's reader needs.
struct Reading {
    client: u64,
    /// Told when the client closed the whole connection.
    hung_up: oneshot::Sender<()>,
    /// The client's own writer queue, for `error` lines.
    replies: mpsc::Sender<String>,
    store: Store,
    acks: Arc<AckCounts>,
}

/// Reads a client's lines: each valid message goes to the router, each ack
/// to the store, anything else is answered with an `error` line.
async fn read_lines(mut reader: OwnedReadHalf, reading: Reading) {
    let client = reading.client;
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
            take_frame(frame, &reading).await;
        }
    }
    // A last line without its newline still counts.
    if let Some(frame) = lines.finish() {
        take_frame(frame, &reading).await;
    }
    // A client that only shut its sending side may still read replies; one
    // that closed the connection (the hang-up is already known, so this
    // does not wait) is let go now, with what the actor keeps for it.
    let closed = reader
        .ready(Interest::WRITABLE)
        .now_or_never()
        .is_some_and(|ready| ready.is_ok_and(|r| r.is_write_closed()));
    if closed {
        let _ = reading.hung_up.send(());
        tracing::debug!(client, "socket client disconnected");
    } else {
        tracing::debug!(client, "socket client stopped sending");
    }
}

async fn take_frame(frame: Frame, reading: &Reading) {
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
                Ok(ClientLine::Ack { outbox_id }) => {
                    take_ack(outbox_id, reading);
                    return;
                }
                Ok(message) => {
                    if let Some(inbound) = to_inbound(message, crate::store::now_millis()) {
                        submit_to_router(inbound).await;
                    }
                    return;
                }
                Err(refusal) => refusal,
            }
        }
    };
    // A client too far behind to take its own error line loses it.
    let _ = reading
        .replies
        .try_send(TalonLine::error(refusal).to_line());
}

/// Marks the acknowledged row sent, if it is an unsent row of a socket chat.
/// Anything else (an unknown id, another channel's row, a row acked before)
/// is ignored without a word to the client: a repeat is normal after a
/// reconnect, and a client must not be able to touch other channels' rows.
fn take_ack(outbox_id: i64, reading: &Reading) {
    let client = reading.client;
    match reading.store.mark_sent_if(outbox_id, is_socket_chat) {
        Ok(true) => {
            reading.acks.acked.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client, outbox_id, "socket client acknowledged a reply");
        }
        Ok(false) => {
            reading.acks.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                client,
                outbox_id,
                "socket ack names no unsent socket reply; ignored"
            );
        }
        // The row stays unsent and is written again on a later connect.
        Err(e) => tracing::warn!(client, outbox_id, error = %e, "cannot record a socket ack"),
    }
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

    type Lines = tokio::io::Lines<tokio::io::BufReader<OwnedReadHalf>>;

    async fn connect(path: &Path) -> (Lines, OwnedWriteHalf) {
        use tokio::io::AsyncBufReadExt;
        let (reader, writer) = tokio::net::UnixStream::connect(path)
            .await
            .unwrap()
            .into_split();
        (tokio::io::BufReader::new(reader).lines(), writer)
    }

    async fn ack(writer: &mut OwnedWriteHalf, outbox_id: i64) {
        let line = format!("{{\"type\":\"ack\",\"outbox_id\":{outbox_id}}}\n");
        writer.write_all(line.as_bytes()).await.unwrap();
    }

    /// Polls the actor's status until `check` holds (bounded).
    async fn wait_for_status(
        actor: &ActorRef<ChannelMsg>,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = inspect(actor).await;
            if check(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn unsent_ids(store: &Store) -> Vec<i64> {
        store
            .unsent_outbox()
            .unwrap()
            .iter()
            .map(|row| row.id)
            .collect()
    }

    #[tokio::test]
    async fn rows_are_marked_sent_only_once_a_client_acknowledges_them() {
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

        // A client connects and is handed it; taking it is not enough.
        let early_line = json!({"type": "reply", "chat": "sock:a", "outbox_id": early.id,
                                "kind": "notice", "text": "early"});
        let (mut lines, writer) = connect(&path).await;
        assert_eq!(read_json(&mut lines).await, early_line);
        // Handed over again (say by its queue), it is not written twice.
        actor.cast(ChannelMsg::Deliver(early.clone())).unwrap();
        let status = inspect(&actor).await;
        assert_eq!(status["clients"], 1, "{status}");
        assert_eq!(status["replies_written"], 1, "{status}");
        assert_eq!(unsent_ids(&store), vec![early.id]);

        // It leaves without acking: the next client is handed the same row.
        drop((lines, writer));
        wait_for_status(&actor, "the client to be let go", |s| s["clients"] == 0).await;
        let (mut lines, mut writer) = connect(&path).await;
        assert_eq!(read_json(&mut lines).await, early_line);

        // Acks that name nothing of ours change nothing and get no answer:
        // an unknown id, another channel's row, a made-up one. A malformed
        // ack is refused like any bad line; the connection stays usable.
        let theirs = store
            .record_notice("term:local", "main", "not yours")
            .unwrap();
        for bogus in [theirs.id + 1000, theirs.id, -1] {
            ack(&mut writer, bogus).await;
        }
        writer
            .write_all(b"{\"type\":\"ack\",\"outbox_id\":\"x\"}\n")
            .await
            .unwrap();
        let error = read_json(&mut lines).await;
        assert_eq!(error["type"], "error", "{error}");
        // Lines are read in order: once the malformed one is answered, the
        // bogus acks before it have been taken.
        let status = inspect(&actor).await;
        assert_eq!(status["acks_ignored"], 3, "{status}");
        assert_eq!(status["acked"], 0, "{status}");
        assert_eq!(unsent_ids(&store), vec![early.id, theirs.id]);

        // The real ack marks it sent; a second one is ignored.
        ack(&mut writer, early.id).await;
        ack(&mut writer, early.id).await;
        let status = wait_for_status(&actor, "both acks", |s| s["acks_ignored"] == 4).await;
        assert_eq!(status["acked"], 1, "{status}");
        assert_eq!(unsent_ids(&store), vec![theirs.id]);

        // A client connecting now is not handed it (nor the other channel's
        // row): its first line is the next reply, which both clients get.
        let (mut third, third_writer) = connect(&path).await;
        wait_for_status(&actor, "the third client", |s| s["clients"] == 2).await;
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
        let settled = json!({"type": "settled", "chat": "sock:a", "through_seq": 4});
        for lines in [&mut lines, &mut third] {
            assert_eq!(read_json(lines).await["outbox_id"], reply.id);
            assert_eq!(read_json(lines).await, settled);
        }

        // Both leave without acking: the reply stays owed, and a row made
        // meanwhile finds nobody.
        drop((lines, writer, third, third_writer));
        wait_for_status(&actor, "the clients to be let go", |s| s["clients"] == 0).await;
        let late = store.record_notice("sock:a", "a", "late").unwrap();
        actor.cast(ChannelMsg::Deliver(late.clone())).unwrap();
        let status = inspect(&actor).await;
        assert_eq!(status["held_for_no_client"], 2, "{status}");
        assert_eq!(unsent_ids(&store), vec![theirs.id, reply.id, late.id]);

        // Stopping takes the socket file away.
        actor.stop(None);
        handle.await.unwrap();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn every_new_client_is_handed_what_is_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("talon.sock");
        let store = Store::open_in_memory().unwrap();
        let args = SocketArgs {
            store: store.clone(),
            path: path.clone(),
        };
        let name = format!("test-socket-{}", uuid::Uuid::new_v4());
        let (actor, handle) = Actor::spawn(Some(name), SocketChannel, args).await.unwrap();
        let (mut first, _first_writer) = connect(&path).await;
        wait_for_status(&actor, "the first client", |s| s["clients"] == 1).await;
        let row = store.record_reply("sock:b", "b", "hi", None, 0).unwrap();
        actor.cast(ChannelMsg::Deliver(row.clone())).unwrap();
        assert_eq!(read_json(&mut first).await["outbox_id"], row.id);

        // The first keeps it unacknowledged and stays: a second client
        // still gets it (the first is not written it again), and once the
        // second acks it, a third does not.
        let (mut second, mut second_writer) = connect(&path).await;
        assert_eq!(read_json(&mut second).await["outbox_id"], row.id);
        assert_eq!(inspect(&actor).await["replies_written"], 2);
        ack(&mut second_writer, row.id).await;
        wait_for_status(&actor, "the ack", |s| s["acked"] == 1).await;
        assert!(store.unsent_outbox().unwrap().is_empty());
        let (_third, _third_writer) = connect(&path).await;
        let status = wait_for_status(&actor, "the third client", |s| s["clients"] == 3).await;
        assert_eq!(status["replies_written"], 2, "{status}");
        actor
            .cast(ChannelMsg::Settled {
                chat_id: "sock:b".into(),
                through_seq: 1,
            })
            .unwrap();
        // Nothing else came before the settled line on the first client.
        assert_eq!(read_json(&mut first).await["type"], "settled");

        actor.stop(None);
        handle.await.unwrap();
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
