//! Host actions as the agent asks for them (SPEC §6), against a real store
//! and, for web fetch, a local HTTP server: authorisation comes from the
//! caller's identity, refusals are errors the model can read, and what is
//! allowed really happens (outbox rows, stored tasks, registered groups).
//! No Docker needed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono_tz::Tz;
use talon::config::WebConfig;
use talon::host_actions::{Caller, HostActions};
use talon::messages::wire::{HostAction, HostResult};
use talon::messages::RegisteredGroup;
use talon::store::{OutboxKind, ScheduleKind, Store, TaskStatus};

fn group(folder: &str, is_main: bool) -> RegisteredGroup {
    RegisteredGroup {
        chat_id: format!("term:{folder}"),
        name: folder.into(),
        folder: folder.into(),
        trigger_pattern: None,
        requires_trigger: !is_main,
        is_main,
        container_config: None,
        added_at: 1,
    }
}

fn caller(folder: &str, is_main: bool) -> Caller {
    Caller {
        group_folder: folder.into(),
        chat_id: format!("term:{folder}"),
        is_main,
    }
}

fn main_caller() -> Caller {
    caller("main", true)
}

fn alpha() -> Caller {
    caller("alpha", false)
}

/// A store with groups main, alpha and beta, and actions over it.
fn setup(web: WebConfig) -> (Store, HostActions) {
    let store = Store::open_in_memory().unwrap();
    for (folder, is_main) in [("main", true), ("alpha", false), ("beta", false)] {
        store.register_group(&group(folder, is_main)).unwrap();
    }
    let actions = HostActions::new(store.clone(), web, Tz::UTC);
    (store, actions)
}

fn ok(result: HostResult) -> String {
    match result {
        HostResult::Ok { content } => content,
        HostResult::Error { message } => panic!("expected success, got error: {message}"),
    }
}

fn err(result: HostResult) -> String {
    match result {
        HostResult::Error { message } => message,
        HostResult::Ok { content } => panic!("expected a refusal, got: {content}"),
    }
}

/// The same action naming another task id.
fn with_task_id(action: HostAction, id: &str) -> HostAction {
    let task_id = id.to_string();
    match action {
        HostAction::PauseTask { .. } => HostAction::PauseTask { task_id },
        HostAction::ResumeTask { .. } => HostAction::ResumeTask { task_id },
        HostAction::CancelTask { .. } => HostAction::CancelTask { task_id },
        HostAction::UpdateTask {
            prompt,
            schedule_type,
            schedule_value,
            ..
        } => HostAction::UpdateTask {
            task_id,
            prompt,
            schedule_type,
            schedule_value,
        },
        other => other,
    }
}

fn schedule(prompt: &str, kind: &str, value: &str, chat: Option<&str>) -> HostAction {
    HostAction::ScheduleTask {
        prompt: prompt.into(),
        schedule_type: kind.into(),
        schedule_value: value.into(),
        context_mode: None,
        chat_id: chat.map(str::to_string),
    }
}

#[tokio::test]
async fn non_main_may_message_only_its_own_chat() {
    let (store, actions) = setup(WebConfig::default());
    let message = err(actions
        .perform(
            &alpha(),
            HostAction::SendMessage {
                chat_id: Some("term:beta".into()),
                text: "hi beta".into(),
            },
        )
        .await);
    assert!(message.contains("only to its own chat"), "{message}");
    assert!(
        store.unsent_outbox().unwrap().is_empty(),
        "a refused message was recorded"
    );

    ok(actions
        .perform(
            &alpha(),
            HostAction::SendMessage {
                chat_id: None,
                text: "to myself".into(),
            },
        )
        .await);
    let rows = store.unsent_outbox().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].chat_id, "term:alpha");
    assert_eq!(rows[0].text, "to myself");
}

#[tokio::test]
async fn main_may_message_any_registered_chat_through_the_outbox() {
    let (store, actions) = setup(WebConfig::default());
    let content = ok(actions
        .perform(
            &main_caller(),
            HostAction::SendMessage {
                chat_id: Some("term:beta".into()),
                text: "hello from main".into(),
            },
        )
        .await);
    assert!(content.contains("term:beta"), "{content}");
    // No channel runs in this test, so the row waits in the outbox.
    let rows = store.unsent_outbox().unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.chat_id, "term:beta");
    assert_eq!(row.group_folder, "beta");
    assert_eq!(row.kind, OutboxKind::Reply);
    assert_eq!(row.text, "hello from main");
    assert_eq!(row.through_seq, None, "a sent message completes no batch");
    assert_eq!(store.cursor("term:beta").unwrap(), 0);

    let message = err(actions
        .perform(
            &main_caller(),
            HostAction::SendMessage {
                chat_id: Some("slack:C999".into()),
                text: "anyone?".into(),
            },
        )
        .await);
    assert!(message.contains("not a registered chat"), "{message}");
    assert_eq!(store.unsent_outbox().unwrap().len(), 1);
}

#[tokio::test]
async fn only_main_registers_groups_and_they_start_being_served() {
    let (store, actions) = setup(WebConfig::default());
    let started: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = started.clone();
    actions.set_group_starter(Arc::new(move |group: RegisteredGroup| {
        seen.lock().unwrap().push(group.folder);
        Ok(())
    }));
    let register = |chat: &str, folder: &str, trigger: Option<&str>| HostAction::RegisterGroup {
        chat_id: chat.into(),
        name: "Family".into(),
        folder: folder.into(),
        requires_trigger: None,
        trigger: trigger.map(str::to_string),
    };

    let message = err(actions
        .perform(&alpha(), register("slack:C1", "family", None))
        .await);
    assert!(message.contains("only the main group"), "{message}");
    assert!(store.group_by_chat("slack:C1").unwrap().is_none());

    for (action, phrase) in [
        (register("C1", "family", None), "<channel>:<id>"),
        (register("slack:C1", "Family!", None), "only a-z"),
        (
            register("slack:C1", "family", Some("^@(oops")),
            "not a valid regex",
        ),
        (register("term:alpha", "alpha2", None), "already registered"),
        (register("slack:C1", "beta", None), "already used"),
    ] {
        let message = err(actions.perform(&main_caller(), action).await);
        assert!(message.contains(phrase), "{phrase}: {message}");
    }
    assert!(started.lock().unwrap().is_empty());

    ok(actions
        .perform(
            &main_caller(),
            register("slack:C1", "family", Some("^@bot\\b")),
        )
        .await);
    let stored = store.group_by_chat("slack:C1").unwrap().unwrap();
    assert_eq!(stored.folder, "family");
    assert!(!stored.is_main, "an agent never creates a main group");
    assert!(stored.requires_trigger);
    assert_eq!(stored.trigger_pattern.as_deref(), Some("^@bot\\b"));
    assert_eq!(*started.lock().unwrap(), vec!["family".to_string()]);
}

#[tokio::test]
async fn scheduled_tasks_are_validated_and_belong_to_the_caller() {
    let (store, actions) = setup(WebConfig::default());
    let content = ok(actions
        .perform(
            &alpha(),
            schedule("water the plants", "cron", "0 9 * * 1-5", None),
        )
        .await);
    let tasks = store.tasks(None).unwrap();
    assert_eq!(tasks.len(), 1);
    let task = &tasks[0];
    assert!(content.contains(&task.id), "{content}");
    assert_eq!(task.group_folder, "alpha");
    assert_eq!(task.chat_id, "term:alpha");
    assert_eq!(task.schedule_kind, ScheduleKind::Cron);
    assert_eq!(task.status, TaskStatus::Active);
    assert!(task.next_run.unwrap() > talon::store::now_millis());

    for (action, phrase) in [
        (schedule("x", "cron", "0 9 * *", None), "5 fields"),
        (schedule("x", "interval", "1000", None), "at least 60000"),
        (
            schedule("x", "once", "2001-01-01T00:00:00Z", None),
            "in the past",
        ),
        (schedule("x", "weekly", "1", None), "schedule_type"),
        (schedule(" ", "interval", "60000", None), "prompt is empty"),
        (
            schedule("x", "interval", "60000", Some("term:beta")),
            "only for its own chat",
        ),
    ] {
        let message = err(actions.perform(&alpha(), action).await);
        assert!(message.contains(phrase), "{phrase}: {message}");
    }
    assert_eq!(
        store.tasks(None).unwrap().len(),
        1,
        "a refused task was stored"
    );

    // Main may schedule for another registered chat; it belongs to that group.
    ok(actions
        .perform(
            &main_caller(),
            schedule("report", "interval", "3600000", Some("term:beta")),
        )
        .await);
    let beta = store.tasks(Some("beta")).unwrap();
    assert_eq!(beta.len(), 1);
    assert_eq!(beta[0].chat_id, "term:beta");
}

#[tokio::test]
async fn groups_manage_only_their_own_tasks() {
    let (store, actions) = setup(WebConfig::default());
    ok(actions
        .perform(
            &caller("beta", false),
            schedule("beta's", "interval", "60000", None),
        )
        .await);
    ok(actions
        .perform(&alpha(), schedule("alpha's", "interval", "60000", None))
        .await);
    let beta_task = store.tasks(Some("beta")).unwrap().remove(0).id;
    let alpha_task = store.tasks(Some("alpha")).unwrap().remove(0).id;

    for action in [
        HostAction::PauseTask {
            task_id: beta_task.clone(),
        },
        HostAction::CancelTask {
            task_id: beta_task.clone(),
        },
        HostAction::ResumeTask {
            task_id: beta_task.clone(),
        },
        HostAction::UpdateTask {
            task_id: beta_task.clone(),
            prompt: Some("hijacked".into()),
            schedule_type: None,
            schedule_value: None,
        },
    ] {
        let refused = err(actions.perform(&alpha(), action.clone()).await);
        // Refused exactly as an unknown id: nothing tells alpha the id exists.
        let unknown = err(actions
            .perform(&alpha(), with_task_id(action, "task-nope"))
            .await);
        assert_eq!(
            refused.replace(&beta_task, "ID"),
            unknown.replace("task-nope", "ID"),
            "a foreign task id is refused differently from an unknown one"
        );
    }
    let untouched = store.task(&beta_task).unwrap().unwrap();
    assert_eq!(untouched.status, TaskStatus::Active);
    assert_eq!(untouched.prompt, "beta's");

    let message = err(actions
        .perform(
            &alpha(),
            HostAction::PauseTask {
                task_id: "task-nope".into(),
            },
        )
        .await);
    assert!(
        message.contains("no task of this group has id"),
        "{message}"
    );

    // Listing shows only the caller's tasks; main sees all.
    let listed = ok(actions.perform(&alpha(), HostAction::ListTasks).await);
    assert!(
        listed.contains(&alpha_task) && !listed.contains(&beta_task),
        "{listed}"
    );
    let all = ok(actions.perform(&main_caller(), HostAction::ListTasks).await);
    assert!(
        all.contains(&alpha_task) && all.contains(&beta_task),
        "{all}"
    );

    // Its own: pause, resume, update, cancel.
    let me = alpha();
    let own = |action| actions.perform(&me, action);
    ok(own(HostAction::PauseTask {
        task_id: alpha_task.clone(),
    })
    .await);
    assert_eq!(
        store.task(&alpha_task).unwrap().unwrap().status,
        TaskStatus::Paused
    );
    ok(own(HostAction::ResumeTask {
        task_id: alpha_task.clone(),
    })
    .await);
    assert_eq!(
        store.task(&alpha_task).unwrap().unwrap().status,
        TaskStatus::Active
    );
    let message = err(own(HostAction::UpdateTask {
        task_id: alpha_task.clone(),
        prompt: None,
        schedule_type: Some("cron".into()),
        schedule_value: Some("61 * * * *".into()),
    })
    .await);
    assert!(message.contains("outside 0-59"), "{message}");
    ok(own(HostAction::UpdateTask {
        task_id: alpha_task.clone(),
        prompt: Some("alpha's, revised".into()),
        schedule_type: Some("cron".into()),
        schedule_value: Some("30 7 * * *".into()),
    })
    .await);
    let updated = store.task(&alpha_task).unwrap().unwrap();
    assert_eq!(updated.prompt, "alpha's, revised");
    assert_eq!(updated.schedule_kind, ScheduleKind::Cron);
    ok(own(HostAction::CancelTask {
        task_id: alpha_task.clone(),
    })
    .await);
    assert!(store.task(&alpha_task).unwrap().is_none());

    // Main may manage any group's task.
    ok(actions
        .perform(
            &main_caller(),
            HostAction::CancelTask {
                task_id: beta_task.clone(),
            },
        )
        .await);
    assert!(store.task(&beta_task).unwrap().is_none());
}

/// A local server: `/small`, `/big` (5000 bytes), `/hop` (redirects to
/// `/small`) and `/escape` (redirects to a private address).
async fn web_server() -> String {
    use axum::response::Redirect;
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/small", get(|| async { "hello from the test server" }))
        .route("/big", get(|| async { "x".repeat(5000) }))
        .route("/hop", get(|| async { Redirect::temporary("/small") }))
        .route(
            "/escape",
            get(|| async { Redirect::temporary("http://10.20.30.40/secret") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

/// The fetched body: after the status line, before any cut note.
fn body(content: &str) -> &str {
    let (_, rest) = content.split_once("\n\n").unwrap();
    rest.split("\n\n[cut").next().unwrap()
}

fn fetch(url: String, max_bytes: Option<u64>) -> HostAction {
    HostAction::WebFetch { url, max_bytes }
}

#[tokio::test]
async fn web_fetch_refuses_loopback_unless_allowed() {
    let base = web_server().await;
    let (_, strict) = setup(WebConfig::default());
    let message = err(strict
        .perform(&alpha(), fetch(format!("{base}/small"), None))
        .await);
    assert!(message.contains("loopback"), "{message}");
    let message = err(strict
        .perform(&alpha(), fetch("http://localhost:9/".into(), None))
        .await);
    assert!(message.contains("loopback"), "{message}");

    let web = WebConfig {
        allow_loopback: true,
        timeout: Duration::from_secs(10),
        max_bytes: 1000,
    };
    let (_, open) = setup(web);
    let content = ok(open
        .perform(&alpha(), fetch(format!("{base}/small"), None))
        .await);
    assert!(content.starts_with("HTTP 200"), "{content}");
    assert!(content.contains("hello from the test server"), "{content}");
    assert!(!content.contains("[cut"), "{content}");

    // The configured cap applies; a request may lower it, never raise it.
    let content = ok(open
        .perform(&alpha(), fetch(format!("{base}/big"), None))
        .await);
    assert_eq!(body(&content).len(), 1000, "cap not applied");
    assert!(body(&content).bytes().all(|b| b == b'x'));
    assert!(
        content.contains("[cut: only the first 1000 bytes"),
        "{content}"
    );
    let content = ok(open
        .perform(&alpha(), fetch(format!("{base}/big"), Some(100)))
        .await);
    assert_eq!(body(&content).len(), 100);
    let content = ok(open
        .perform(&alpha(), fetch(format!("{base}/big"), Some(1_000_000)))
        .await);
    assert_eq!(body(&content).len(), 1000, "a request raised the cap");

    // Redirects are followed, and each target is checked.
    let content = ok(open
        .perform(&alpha(), fetch(format!("{base}/hop"), None))
        .await);
    assert!(content.contains("hello from the test server"), "{content}");
    let message = err(open
        .perform(&alpha(), fetch(format!("{base}/escape"), None))
        .await);
    assert!(
        message.contains("10.20.30.40") && message.contains("private"),
        "{message}"
    );
}

#[tokio::test]
async fn web_fetch_gives_up_at_the_timeout() {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/slow",
        // A server that never answers: the fetch must give up on its own.
        get(|| async {
            std::future::pending::<()>().await;
            "never"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let (_, actions) = setup(WebConfig {
        allow_loopback: true,
        timeout: Duration::from_millis(200),
        max_bytes: 1000,
    });
    let started = std::time::Instant::now();
    let message = err(actions
        .perform(&alpha(), fetch(format!("http://{addr}/slow"), None))
        .await);
    assert!(message.contains("took longer than"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
