//! The local socket channel through the real binary (`talon run`), the real
//! Docker engine and agent image, and a fake model: a message in, the reply
//! line out; refused lines; a reply made while no client was connected,
//! handed to the next client that connects; and at-least-once delivery: a
//! reply counts as sent only once a client acknowledges its `outbox_id`.

#[path = "support/socket_client.rs"]
mod socket_client;
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use socket_client::{connect, Read};
use support::fake_anthropic::{FakeAnthropic, Reply};
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Answers `reply to: <text>`; a text containing "slow" waits a moment
/// first, long enough for its sender to hang up.
async fn model() -> FakeAnthropic {
    FakeAnthropic::start_with(|body| {
        let text = last_message_text(&last_user_text(body));
        let reply = Reply::text(format!("reply to: {text}"));
        if text.contains("slow") {
            Reply::delayed(Duration::from_millis(1500), reply)
        } else {
            reply
        }
    })
    .await
}

async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_clients_get_replies_and_what_they_missed() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = model().await;
    let home = Home::new();
    let paths = home.paths();
    let mut env = host_env(home.path(), &model.base_url);
    env.push(("TALON_CHANNELS_SOCKET".into(), "true".into()));
    let socket = home.path().join("data/talon.sock");

    let added = talon(&env)
        .args([
            "groups",
            "add",
            "sock:a",
            "--name",
            "A",
            "--folder",
            "a",
            "--no-trigger",
        ])
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", stderr_of(&added));
    // A socket left by a host that died: the new host replaces it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());

    let mut daemon = spawn_daemon(&env);
    let stderr = collect_stderr(&mut daemon);
    wait_until("the startup line", LIMIT, || {
        stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("talon: running; channels: socket"))
    })
    .await;
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let meta = std::fs::metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    // Refused lines get an error line each; the connection stays usable.
    let mut first = connect(&socket, LIMIT).await;
    assert!(first.send_raw(b"this is not json\n").await);
    let error = first.expect_line(LIMIT).await;
    assert_eq!(error["type"], "error", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not a valid message line"),
        "{error}"
    );
    assert!(first.send("term:local", "x1", "sneaky").await);
    let error = first.expect_line(LIMIT).await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not a socket chat"),
        "{error}"
    );
    let mut huge = vec![b'x'; 1024 * 1024 + 10];
    huge.push(b'\n');
    assert!(first.send_raw(&huge).await);
    let error = first.expect_line(LIMIT).await;
    assert!(
        error["message"].as_str().unwrap().contains("longer than"),
        "{error}"
    );

    // A message in, its reply out, then the settled line.
    assert!(first.send("sock:a", "1", "hello").await);
    let reply = first.expect_line(LIMIT).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["chat"], "sock:a");
    assert_eq!(reply["kind"], "reply");
    assert_eq!(reply["text"], "reply to: hello");
    assert!(reply["outbox_id"].as_i64().is_some(), "{reply}");
    let settled = first.expect_line(LIMIT).await;
    assert_eq!(settled["type"], "settled", "{settled}");
    assert_eq!(settled["chat"], "sock:a");
    assert!(settled["through_seq"].as_i64().unwrap() >= 1, "{settled}");
    // The same id again is recognised: no second answer.
    assert!(first.send("sock:a", "1", "hello").await);
    drop(first);
    // The first reply's ack lands (the reader takes it to the store on its
    // own time), so the only row owed below is the slow one.
    let store = talon::store::Store::open(&paths.db()).unwrap();
    wait_until("the first reply's ack to mark it sent", LIMIT, || {
        !store
            .unsent_outbox()
            .unwrap()
            .iter()
            .any(|row| row.chat_id == "sock:a")
    })
    .await;

    // A second client sends, then hangs up before the (slow) reply exists.
    let mut second = connect(&socket, LIMIT).await;
    assert!(second.send("sock:a", "2", "slow one").await);
    drop(second);
    wait_until("the reply to wait in the outbox", LIMIT, || {
        store
            .unsent_outbox()
            .unwrap()
            .iter()
            .any(|row| row.chat_id == "sock:a")
    })
    .await;
    let held = store.unsent_outbox().unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].text, "reply to: slow one");

    // The next client is handed it at once, and once it acks (the test
    // client does) it counts as sent.
    let mut third = connect(&socket, LIMIT).await;
    let (missed, before) = third.until("reply", LIMIT).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(
        missed,
        json!({"type": "reply", "chat": "sock:a", "outbox_id": held[0].id, "kind": "reply",
               "text": "reply to: slow one"})
    );
    wait_until("the reply to be marked sent", LIMIT, || {
        store.unsent_outbox().unwrap().is_empty()
    })
    .await;
    // Nothing else was owed: in particular no second answer to "hello".
    match third.read(Duration::from_millis(500)).await {
        Read::Nothing => {}
        other => panic!("unexpected {other:?}"),
    }
    let hellos = model
        .requests()
        .iter()
        .filter(|r| last_message_text(&last_user_text(&r.body)) == "hello")
        .count();
    assert_eq!(hellos, 1, "the resent message reached the model again");

    // A clean stop takes the socket file and every container with it.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert!(
        status.success(),
        "exit {status:?}: {:?}",
        stderr.lock().unwrap()
    );
    match third.read(LIMIT).await {
        Read::Closed => {}
        other => panic!("the connection outlived the host: {other:?}"),
    }
    assert!(!socket.exists(), "the socket file was left behind");
    assert!(talon_containers(home.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_comes_again_until_a_client_acknowledges_it() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = model().await;
    let home = Home::new();
    let paths = home.paths();
    let mut env = host_env(home.path(), &model.base_url);
    env.push(("TALON_CHANNELS_SOCKET".into(), "true".into()));
    let socket = home.path().join("data/talon.sock");
    let added = talon(&env)
        .args([
            "groups",
            "add",
            "sock:b",
            "--name",
            "B",
            "--folder",
            "b",
            "--no-trigger",
        ])
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", stderr_of(&added));
    let mut daemon = spawn_daemon(&env);
    let stderr = collect_stderr(&mut daemon);
    let store = talon::store::Store::open(&paths.db()).unwrap();
    let unsent = || -> Vec<i64> {
        store
            .unsent_outbox()
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect()
    };

    // The reply arrives; the client drops the connection before acking.
    let mut client = connect(&socket, LIMIT).await;
    client.set_auto_ack(false);
    assert!(client.send("sock:b", "1", "hello").await);
    let (reply, _) = client.until("reply", LIMIT).await;
    assert_eq!(reply["text"], "reply to: hello", "{reply}");
    let id = reply["outbox_id"].as_i64().expect("an outbox id");
    assert_eq!(unsent(), vec![id], "a reply written but not acked is owed");

    // On reconnect it comes again, the same row; still not acked, so once
    // more on the next connect.
    let mut client = client.reconnect(&socket, LIMIT).await;
    for round in 0..2 {
        let again = loop {
            match client.read(LIMIT).await {
                Read::Repeat(again) => break again,
                // The settled line may have reached this connection.
                Read::Line(line) if line["type"] == "settled" => continue,
                other => panic!("connect {round}: expected the reply again, got {other:?}"),
            }
        };
        assert_eq!(again, reply);
        assert_eq!(unsent(), vec![id]);
        client = client.reconnect(&socket, LIMIT).await;
    }

    // This time it is acked (on the connection that got it), and so sent.
    client.set_auto_ack(true);
    match client.read(LIMIT).await {
        Read::Repeat(again) => assert_eq!(again["outbox_id"], id),
        other => panic!("expected the reply again, got {other:?}"),
    }
    wait_until("the ack to mark the reply sent", LIMIT, || {
        unsent().is_empty()
    })
    .await;
    // Never again: the next connect is handed nothing.
    let mut client = client.reconnect(&socket, LIMIT).await;
    match client.read(Duration::from_millis(500)).await {
        Read::Nothing => {}
        other => panic!("unexpected {other:?}"),
    }
    let hellos = model
        .requests()
        .iter()
        .filter(|r| last_message_text(&last_user_text(&r.body)) == "hello")
        .count();
    assert_eq!(hellos, 1, "one message, one agent run");

    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert!(
        status.success(),
        "exit {status:?}: {:?}",
        stderr.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_socket_channel_is_off_unless_enabled() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let home = Home::new();
    let env = host_env(home.path(), "http://127.0.0.1:9");
    let mut daemon = spawn_daemon(&env);
    let stderr = collect_stderr(&mut daemon);
    wait_until("the startup line", LIMIT, || {
        stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("talon: running"))
    })
    .await;
    let startup = stderr.lock().unwrap().join("\n");
    assert!(startup.contains("running with no channels"), "{startup}");
    assert!(!home.path().join("data/talon.sock").exists());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
}
