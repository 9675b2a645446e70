//! The host's actor tree in-process: routing rules, recovery of a killed
//! actor, and the state dump — with the real engine and image.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use support::inproc::*;
use support::*;
use talon::actors::router::{RouterMsg, ROUTER};
use talon::actors::supervisor::{ChildSpec, Restart, SupervisorMsg};
use talon::actors::terminal::{TerminalOutput, TERMINAL_CHAT};

#[tokio::test(flavor = "multi_thread")]
async fn unregistered_chats_are_stored_and_untriggered_messages_wait_as_context() {
    let _one = ONE_HOST.lock().await;
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let model = replying_model().await;
    let groups = [
        group(TERMINAL_CHAT, "main", true, false),
        group("term:family", "family", false, true),
    ];
    let mut host = start_host(docker, &model, &groups).await;

    router()
        .cast(RouterMsg::Inbound(message("term:stranger", "s1", "hello?")))
        .unwrap();
    router()
        .cast(RouterMsg::Inbound(message(
            "term:family",
            "f1",
            "just chatting",
        )))
        .unwrap();
    // The main chat needs no trigger; its reply is the barrier for the above.
    router()
        .cast(RouterMsg::Inbound(message(TERMINAL_CHAT, "m1", "ping")))
        .unwrap();
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("reply to: ping".into())
    );
    assert_eq!(
        model.request_count(),
        1,
        "only the main chat may reach the model"
    );
    assert_eq!(
        host.store
            .messages_after("term:stranger", 0, 10)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(host.store.cursor("term:family").unwrap(), 0);

    // The trigger wakes the family group; the earlier message rides along as context.
    router()
        .cast(RouterMsg::Inbound(message(
            "term:family",
            "f2",
            "@talon what's up",
        )))
        .unwrap();
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("reply to: @talon what's up".into())
    );
    let requests = model.requests();
    let prompt = last_user_text(&requests.last().unwrap().body);
    assert!(
        prompt.contains("just chatting"),
        "context missing: {prompt}"
    );
    assert_eq!(model.request_count(), 2);

    // A redelivered event (same platform id) is not answered twice.
    router()
        .cast(RouterMsg::Inbound(message(
            "term:family",
            "f2",
            "@talon what's up",
        )))
        .unwrap();
    router()
        .cast(RouterMsg::Inbound(message(
            TERMINAL_CHAT,
            "m2",
            "still there?",
        )))
        .unwrap();
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("reply to: still there?".into())
    );
    assert_eq!(model.request_count(), 3);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_router_is_restarted_and_the_tree_is_dumped() {
    let _one = ONE_HOST.lock().await;
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let model = replying_model().await;
    let mut host = start_host(docker, &model, &[group(TERMINAL_CHAT, "main", true, false)]).await;

    let first = router();
    first.get_cell().kill();
    // The supervisor restarts it under the same name (a new actor id).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        if let Some(cell) = ractor::registry::where_is(ROUTER) {
            if cell.get_id() != first.get_id() {
                break ActorRef::<RouterMsg>::from(cell);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "router was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    second
        .cast(RouterMsg::Inbound(message(
            TERMINAL_CHAT,
            "m1",
            "after restart",
        )))
        .unwrap();
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("reply to: after restart".into())
    );

    let path = host.host.as_ref().unwrap().write_dump().await.unwrap();
    let dump: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tree = &dump["tree"];
    assert_eq!(tree["name"], "talon");
    let names: Vec<&str> = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["channels", "groups", "router", "scheduler", "token-manager"]
    );
    let root_children = tree["state"]["children"].as_array().unwrap();
    let router_report = root_children
        .iter()
        .find(|c| c["name"] == "router")
        .unwrap();
    assert_eq!(router_report["restarts"], 1);
    let groups = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "groups")
        .unwrap();
    let queue = &groups["children"][0];
    assert_eq!(queue["name"], "queue:main");
    assert_eq!(queue["state"]["cursor"], 1);
    let text = dump.to_string();
    assert!(
        !text.contains("sk-ant-test-key"),
        "a secret reached the dump"
    );
    host.stop().await;
}

/// An actor that panics when told to: a stand-in for a bug in any handler.
struct Fragile(Arc<AtomicU32>);

impl Actor for Fragile {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn handle(&self, _: ActorRef<()>, _: (), _: &mut ()) -> Result<(), ActorProcessingErr> {
        panic!("a bug in a handler");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_actor_in_the_tree_is_restarted_and_the_host_keeps_serving() {
    let _one = ONE_HOST.lock().await;
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let model = replying_model().await;
    let mut host = start_host(docker, &model, &[group(TERMINAL_CHAT, "main", true, false)]).await;

    let starts = Arc::new(AtomicU32::new(0));
    let counter = starts.clone();
    let spec = ChildSpec::actor("fragile", Restart::Permanent, move || {
        (Fragile(counter.clone()), ())
    });
    let channels: ActorRef<SupervisorMsg> = ractor::registry::where_is("channels").unwrap().into();
    let added = ractor::call!(channels, |reply| SupervisorMsg::StartChild(
        spec,
        Some(reply)
    ))
    .unwrap();
    assert_eq!(added, Ok(()));
    assert_eq!(starts.load(Ordering::SeqCst), 1);

    let fragile: ActorRef<()> = ractor::registry::where_is("fragile").unwrap().into();
    fragile.cast(()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while starts.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the panicking actor was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = ractor::call!(channels, SupervisorMsg::Inspect).unwrap();
    let fragile_report = report
        .children
        .iter()
        .find(|c| c.name == "fragile")
        .unwrap();
    assert_eq!(fragile_report.restarts, 1);
    assert!(fragile_report
        .last_failure
        .as_deref()
        .unwrap_or("")
        .contains("a bug in a handler"));

    // The rest of the tree never noticed.
    router()
        .cast(RouterMsg::Inbound(message(
            TERMINAL_CHAT,
            "m1",
            "still fine?",
        )))
        .unwrap();
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("reply to: still fine?".into())
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_due_task_runs_before_the_groups_waiting_messages_and_idle_slots_are_yielded() {
    use support::fake_anthropic::{FakeAnthropic, Reply};
    use talon::actors::group_queue::{queue_name, DueTask, GroupQueueMsg};
    let _one = ONE_HOST.lock().await;
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let model = FakeAnthropic::start_with(|body| {
        let prompt = last_user_text(body);
        if prompt.contains("slow") {
            Reply::delayed(Duration::from_millis(1500), Reply::text("slow done"))
        } else if prompt.contains("<scheduled_task") {
            Reply::text("task done")
        } else {
            Reply::text(format!("reply to: {}", last_message_text(&prompt)))
        }
    })
    .await;
    let groups = [
        group(TERMINAL_CHAT, "main", true, false),
        group("term:g1", "g1", false, false),
    ];
    // One slot: g1 has to wait while main works. Main's container would idle
    // for 10 minutes: it must give the slot up as soon as it is idle.
    let overrides = [
        ("TALON_QUEUE_MAX_CONCURRENT_CONTAINERS", "1"),
        ("TALON_CONTAINER_IDLE_TIMEOUT", "10m"),
    ];
    let mut host = start_host_with(docker, &model, &groups, &overrides).await;
    router()
        .cast(RouterMsg::Inbound(message(TERMINAL_CHAT, "m1", "slow")))
        .unwrap();
    // Wait until main holds the slot.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while model.request_count() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "main never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A message for g1 arrives first, then one of its tasks falls due.
    router()
        .cast(RouterMsg::Inbound(message("term:g1", "g1-1", "hello g1")))
        .unwrap();
    let queue: ActorRef<GroupQueueMsg> =
        ractor::registry::where_is(queue_name("g1")).unwrap().into();
    let task = tokio::spawn(async move {
        ractor::call!(queue, |reply| GroupQueueMsg::TaskDue(DueTask {
            task_id: "daily-digest".into(),
            prompt: "summarise the day".into(),
            isolated: false,
            done: Some(reply),
        }))
    });
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("slow done".into())
    );
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("task done".into())
    );
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("reply to: hello g1".into())
    );
    let outcome = task.await.unwrap().unwrap();
    assert!(outcome.success);
    assert_eq!(outcome.output, "task done");
    // The task completed no messages: the cursor moved only for the message.
    assert_eq!(
        host.store.cursor("term:g1").unwrap(),
        host.store.latest_seq("term:g1").unwrap()
    );
    host.stop().await;
}
