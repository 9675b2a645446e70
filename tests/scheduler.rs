//! Scheduled tasks fire (SPEC §10): a due task runs in its group's
//! container, its output reaches the chat, the run is logged, and one due
//! time fires once — with the real host, engine and agent image.

mod support;

use std::time::Duration;

use support::inproc::*;
use support::*;
use talon::actors::terminal::{TerminalOutput, TERMINAL_CHAT};
use talon::store::{ContextMode, ScheduleKind, TaskRow, TaskStatus};

fn task(id: &str, kind: ScheduleKind, value: &str, prompt: &str, due: i64) -> TaskRow {
    TaskRow {
        id: id.into(),
        group_folder: "main".into(),
        chat_id: TERMINAL_CHAT.into(),
        prompt: prompt.into(),
        schedule_kind: kind,
        schedule_value: value.into(),
        context_mode: ContextMode::Group,
        next_run: Some(due),
        last_run: None,
        status: TaskStatus::Active,
        created_at: 1,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn due_tasks_fire_once_deliver_their_output_and_are_logged() {
    let _one = ONE_HOST.lock().await;
    let Some(docker) = docker_with_image().await else {
        return;
    };
    // Echoes the whole prompt the task gave the agent.
    let model = support::fake_anthropic::FakeAnthropic::start_with(|body| {
        support::fake_anthropic::Reply::text(format!("ran: {}", last_user_text(body)))
    })
    .await;
    let mut host = start_host(docker, &model, &[group(TERMINAL_CHAT, "main", true, false)]).await;
    let now = talon::store::now_millis();
    // Overdue (as after a host that was down) and due in a moment.
    host.store
        .insert_task(&task(
            "late",
            ScheduleKind::Interval,
            "60000",
            "water the plants",
            now - 150_000,
        ))
        .unwrap();
    host.store
        .insert_task(&task(
            "soon",
            ScheduleKind::Once,
            "2030-01-01T00:00:00Z",
            "say good morning",
            now + 300,
        ))
        .unwrap();
    talon::actors::scheduler::wake_scheduler();

    let mut outputs = Vec::new();
    for _ in 0..2 {
        match host.next_reply().await {
            TerminalOutput::Reply(text) => outputs.push(text),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(outputs[0].contains("water the plants"), "{outputs:?}");
    assert!(outputs[1].contains("say good morning"), "{outputs:?}");

    // The late interval task fired once (not once per missed minute) and
    // is next due a whole interval after its last due time past now.
    let late = host.store.task("late").unwrap().unwrap();
    assert_eq!(late.status, TaskStatus::Active);
    let next = late.next_run.unwrap();
    assert!(next > now && next <= now + 60_000, "next {next}, now {now}");
    assert_eq!(
        (next - (now - 150_000)) % 60_000,
        0,
        "on the schedule's grid"
    );
    let soon = host.store.task("soon").unwrap().unwrap();
    assert_eq!(soon.status, TaskStatus::Completed);

    // Each run is logged with its outcome.
    wait_for("both runs logged", Duration::from_secs(30), || {
        host.store.task_runs("late").unwrap().len() == 1
            && host.store.task_runs("soon").unwrap().len() == 1
    });
    let run = &host.store.task_runs("late").unwrap()[0];
    assert_eq!(run.status, "success");
    assert!(run
        .result
        .as_deref()
        .unwrap_or("")
        .contains("water the plants"));

    // Nothing fires twice: more looks change nothing.
    talon::actors::scheduler::wake_scheduler();
    talon::actors::scheduler::wake_scheduler();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(model.request_count(), 2);
    assert_eq!(host.store.task_runs("late").unwrap().len(), 1);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_isolated_task_runs_in_a_fresh_session_and_leaves_the_groups_alone() {
    let _one = ONE_HOST.lock().await;
    let Some(docker) = docker_with_image().await else {
        return;
    };
    // Says how many user turns the conversation it was sent holds.
    let model = support::fake_anthropic::FakeAnthropic::start_with(|body| {
        let turns = body["messages"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["role"] == "user").count());
        let text = last_user_text(body);
        let shown = if text.contains("</message>") {
            last_message_text(&text)
        } else {
            text
        };
        support::fake_anthropic::Reply::text(format!("{turns} turn(s): {shown}"))
    })
    .await;
    let mut host = start_host(docker, &model, &[group(TERMINAL_CHAT, "main", true, false)]).await;
    router()
        .cast(talon::actors::router::RouterMsg::Inbound(message(
            TERMINAL_CHAT,
            "m1",
            "hello",
        )))
        .unwrap();
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("1 turn(s): hello".into())
    );
    // The turn's result (and so the session) follows its output.
    let store = host.store.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the group's session", Duration::from_secs(30), || {
            store.session("main").unwrap().is_some()
        })
    })
    .await
    .unwrap();
    let before = host.store.session("main").unwrap().expect("a session");

    // While the group's container is still warm, an isolated task is due.
    let mut isolated = task(
        "iso",
        ScheduleKind::Once,
        "2030-01-01T00:00:00Z",
        "check the weather",
        talon::store::now_millis(),
    );
    isolated.context_mode = ContextMode::Isolated;
    host.store.insert_task(&isolated).unwrap();
    talon::actors::scheduler::wake_scheduler();
    match host.next_reply().await {
        // A fresh conversation: only the task's own turn.
        TerminalOutput::Reply(text) => {
            assert!(text.starts_with("1 turn(s)"), "{text}");
            assert!(text.contains("check the weather"), "{text}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        host.store.session("main").unwrap().as_ref(),
        Some(&before),
        "the isolated task moved the group's session"
    );

    // The group's conversation goes on where it was.
    router()
        .cast(talon::actors::router::RouterMsg::Inbound(message(
            TERMINAL_CHAT,
            "m2",
            "again",
        )))
        .unwrap();
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("2 turn(s): again".into())
    );
    host.stop().await;
}
