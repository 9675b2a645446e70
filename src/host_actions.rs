//! What the agent may ask the host to do (SPEC §6): send a message, manage
//! its tasks, register a group, fetch a web page. Authorisation comes from
//! the asking container's own identity ([`Caller`]), never from the request:
//! a non-main group may message only its own chat and manage only its own
//! tasks; only main may register groups or reach other groups' chats.
//!
//! The decisions are pure functions ([`may_message`], [`task_target`],
//! [`may_manage_task`], [`may_register`]) so they are tested on their own.
//! Every refusal is a [`HostResult::Error`] the model can act on, and a
//! warning in the log naming the group, the action and the reason.

pub mod schedule;
pub mod web;

use std::sync::{Arc, Mutex};

use chrono::TimeZone;
use chrono_tz::Tz;

use crate::config::WebConfig;
use crate::messages::wire::{HostAction, HostResult};
use crate::messages::{channel_of, RegisteredGroup, UnixMillis};
use crate::store::{
    now_millis, validate_folder, ContextMode, ScheduleKind, Store, TaskRow, TaskStatus,
};

/// Who is asking: fixed by the container actor when it starts the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub group_folder: String,
    pub chat_id: String,
    pub is_main: bool,
}

/// Starts serving a newly registered group (tells the router, starts its
/// queue). The running host provides it; see `host::start`.
pub type GroupStarter = Arc<dyn Fn(RegisteredGroup) -> Result<(), String> + Send + Sync>;

/// Performs host actions for agents.
pub struct HostActions {
    store: Store,
    /// One HTTP client for every web fetch, made here.
    web: web::WebFetcher,
    timezone: Tz,
    /// Set once the actor tree runs; until then a registered group is
    /// served from the next start.
    group_starter: Mutex<Option<GroupStarter>>,
}

/// A non-main caller may message only its own chat; main may message any
/// registered group's chat.
pub fn may_message(
    caller: &Caller,
    target_chat: &str,
    groups: &[RegisteredGroup],
) -> Result<(), String> {
    if target_chat == caller.chat_id {
        return Ok(());
    }
    if !caller.is_main {
        return Err(format!(
            "this group may send messages only to its own chat ({}), not to {target_chat}",
            caller.chat_id
        ));
    }
    if groups.iter().any(|g| g.chat_id == target_chat) {
        Ok(())
    } else {
        Err(format!(
            "{target_chat} is not a registered chat; list the groups or register it first"
        ))
    }
}

/// Where a task is scheduled: `(group folder, chat id)`. No chat means the
/// caller's own; another chat is main's privilege, and the task then belongs
/// to the group of that chat (it runs in that group's container).
pub fn task_target(
    caller: &Caller,
    chat_id: Option<&str>,
    groups: &[RegisteredGroup],
) -> Result<(String, String), String> {
    let chat = chat_id.unwrap_or(&caller.chat_id);
    if chat == caller.chat_id {
        return Ok((caller.group_folder.clone(), caller.chat_id.clone()));
    }
    if !caller.is_main {
        return Err(format!(
            "this group may schedule tasks only for its own chat ({}), not for {chat}",
            caller.chat_id
        ));
    }
    groups
        .iter()
        .find(|g| g.chat_id == chat)
        .map(|g| (g.folder.clone(), g.chat_id.clone()))
        .ok_or_else(|| format!("{chat} is not a registered chat"))
}

/// A non-main caller may manage only its own group's tasks; main any.
pub fn may_manage_task(caller: &Caller, task: &TaskRow) -> Result<(), String> {
    if caller.is_main || task.group_folder == caller.group_folder {
        Ok(())
    } else {
        // Refused exactly as an unknown id is: any other answer would tell a
        // non-main agent that another group has a task with this id.
        Err(unknown_task(&task.id))
    }
}

/// The one refusal for a task id the caller cannot see, whether it exists
/// in another group or nowhere.
pub fn unknown_task(task_id: &str) -> String {
    format!("no task of this group has id {task_id:?}; list_tasks shows the ids")
}

/// Only main may register groups.
pub fn may_register(caller: &Caller) -> Result<(), String> {
    if caller.is_main {
        Ok(())
    } else {
        Err("only the main group may register groups; ask in the main chat".into())
    }
}

/// A chat id is `<channel>:<id>`, e.g. `slack:C123` or `term:local`.
pub fn check_chat_id(chat_id: &str) -> Result<(), String> {
    let channel = channel_of(chat_id);
    let rest = chat_id.split_once(':').map_or("", |(_, rest)| rest);
    let well_formed = !channel.is_empty()
        && !rest.is_empty()
        && channel.bytes().all(|b| b.is_ascii_alphanumeric())
        && !chat_id.chars().any(char::is_whitespace);
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "chat id {chat_id:?} must be <channel>:<id>, such as slack:C0123 or term:local"
        ))
    }
}

fn action_name(action: &HostAction) -> &'static str {
    match action {
        HostAction::SendMessage { .. } => "send_message",
        HostAction::ScheduleTask { .. } => "schedule_task",
        HostAction::ListTasks => "list_tasks",
        HostAction::PauseTask { .. } => "pause_task",
        HostAction::ResumeTask { .. } => "resume_task",
        HostAction::CancelTask { .. } => "cancel_task",
        HostAction::UpdateTask { .. } => "update_task",
        HostAction::RegisterGroup { .. } => "register_group",
        HostAction::WebFetch { .. } => "web_fetch",
    }
}

type Outcome = Result<String, String>;

impl HostActions {
    /// `timezone` is the one cron schedules and local `once` times use.
    pub fn new(store: Store, web: WebConfig, timezone: Tz) -> HostActions {
        HostActions {
            store,
            web: web::WebFetcher::new(web),
            timezone,
            group_starter: Mutex::new(None),
        }
    }

    /// Installs how newly registered groups start being served.
    pub fn set_group_starter(&self, starter: GroupStarter) {
        if let Ok(mut slot) = self.group_starter.lock() {
            *slot = Some(starter);
        }
    }

    pub async fn perform(&self, caller: &Caller, action: HostAction) -> HostResult {
        let name = action_name(&action);
        let outcome = match action {
            HostAction::SendMessage { chat_id, text } => {
                self.send_message(caller, chat_id.as_deref(), &text)
            }
            HostAction::ScheduleTask {
                prompt,
                schedule_type,
                schedule_value,
                context_mode,
                chat_id,
            } => self.schedule_task(
                caller,
                &prompt,
                &schedule_type,
                &schedule_value,
                context_mode.as_deref(),
                chat_id.as_deref(),
            ),
            HostAction::ListTasks => self.list_tasks(caller),
            HostAction::PauseTask { task_id } => self.pause_task(caller, &task_id),
            HostAction::ResumeTask { task_id } => self.resume_task(caller, &task_id),
            HostAction::CancelTask { task_id } => self.cancel_task(caller, &task_id),
            HostAction::UpdateTask {
                task_id,
                prompt,
                schedule_type,
                schedule_value,
            } => self.update_task(
                caller,
                &task_id,
                prompt.as_deref(),
                schedule_type.as_deref(),
                schedule_value.as_deref(),
            ),
            HostAction::RegisterGroup {
                chat_id,
                name,
                folder,
                requires_trigger,
                trigger,
            } => self.register_group(caller, chat_id, name, folder, requires_trigger, trigger),
            HostAction::WebFetch { url, max_bytes } => {
                self.web_fetch(caller, &url, max_bytes).await
            }
        };
        if outcome.is_ok() && name.ends_with("_task") {
            // A new or changed schedule may be due sooner than the
            // scheduler's next look.
            crate::actors::scheduler::wake_scheduler();
        }
        match outcome {
            Ok(content) => {
                tracing::info!(group = %caller.group_folder, action = name, "host action done");
                HostResult::Ok { content }
            }
            Err(reason) => {
                tracing::warn!(group = %caller.group_folder, action = name, %reason,
                    "host action refused");
                HostResult::Error { message: reason }
            }
        }
    }

    fn groups(&self) -> Result<Vec<RegisteredGroup>, String> {
        self.store.groups().map_err(internal)
    }

    fn send_message(&self, caller: &Caller, chat_id: Option<&str>, text: &str) -> Outcome {
        let target = chat_id.unwrap_or(&caller.chat_id);
        if text.trim().is_empty() {
            return Err("the message text is empty".into());
        }
        let groups = self.groups()?;
        // A refusal is logged once, by `perform`, with its reason.
        may_message(caller, target, &groups)?;
        // The row belongs to the group whose chat it goes to.
        let folder = groups
            .iter()
            .find(|g| g.chat_id == target)
            .map_or(caller.group_folder.as_str(), |g| g.folder.as_str());
        let row = self
            .store
            .record_task_output(target, folder, text)
            .map_err(internal)?;
        crate::actors::group_queue::deliver_row(row);
        Ok(format!("Message sent to {target}."))
    }

    fn schedule_task(
        &self,
        caller: &Caller,
        prompt: &str,
        schedule_type: &str,
        schedule_value: &str,
        context_mode: Option<&str>,
        chat_id: Option<&str>,
    ) -> Outcome {
        if prompt.trim().is_empty() {
            return Err("the task prompt is empty".into());
        }
        let kind = schedule::parse_kind(schedule_type)?;
        let context_mode = match context_mode.map(str::trim) {
            None | Some("") => ContextMode::Isolated,
            Some(text) => ContextMode::parse(text).ok_or_else(|| {
                format!("context_mode must be \"group\" or \"isolated\", not {text:?}")
            })?,
        };
        let (group_folder, chat_id) = task_target(caller, chat_id, &self.groups()?)?;
        let now = now_millis();
        let value = schedule_value.trim();
        let next_run = schedule::first_run(kind, value, self.timezone, now)?;
        let id = format!("task-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let task = TaskRow {
            id: id.clone(),
            group_folder,
            chat_id,
            prompt: prompt.to_string(),
            schedule_kind: kind,
            schedule_value: value.to_string(),
            context_mode,
            next_run: Some(next_run),
            last_run: None,
            status: TaskStatus::Active,
            created_at: now,
        };
        self.store.insert_task(&task).map_err(internal)?;
        Ok(format!(
            "Scheduled task {id} ({} {value}, {} context) for {}; first run {}.",
            kind.as_str(),
            context_mode.as_str(),
            task.chat_id,
            self.local_time(next_run)
        ))
    }

    fn list_tasks(&self, caller: &Caller) -> Outcome {
        let folder = (!caller.is_main).then_some(caller.group_folder.as_str());
        let tasks = self.store.tasks(folder).map_err(internal)?;
        if tasks.is_empty() {
            return Ok("No scheduled tasks.".into());
        }
        let listed: Vec<serde_json::Value> = tasks
            .iter()
            .map(|t| {
                serde_json::json!({
                    "id": t.id,
                    "group": t.group_folder,
                    "chat_id": t.chat_id,
                    "prompt": t.prompt,
                    "schedule_type": t.schedule_kind,
                    "schedule_value": t.schedule_value,
                    "context_mode": t.context_mode,
                    "status": t.status,
                    "next_run": t.next_run.map(|ms| self.local_time(ms)),
                    "last_run": t.last_run.map(|ms| self.local_time(ms)),
                })
            })
            .collect();
        serde_json::to_string_pretty(&listed).map_err(internal)
    }

    /// The task, if it exists and the caller may manage it.
    fn own_task(&self, caller: &Caller, task_id: &str) -> Result<TaskRow, String> {
        let task = self
            .store
            .task(task_id)
            .map_err(internal)?
            .ok_or_else(|| unknown_task(task_id))?;
        may_manage_task(caller, &task)?;
        Ok(task)
    }

    fn pause_task(&self, caller: &Caller, task_id: &str) -> Outcome {
        let task = self.own_task(caller, task_id)?;
        match task.status {
            TaskStatus::Paused => Ok(format!("Task {task_id} is already paused.")),
            TaskStatus::Completed => Err(format!("task {task_id} has completed; nothing to pause")),
            TaskStatus::Active => {
                self.set_status(task_id, TaskStatus::Paused, None)?;
                Ok(format!("Paused task {task_id}."))
            }
        }
    }

    fn resume_task(&self, caller: &Caller, task_id: &str) -> Outcome {
        let task = self.own_task(caller, task_id)?;
        match task.status {
            TaskStatus::Active => Ok(format!("Task {task_id} is already active.")),
            TaskStatus::Completed => Err(format!(
                "task {task_id} has completed; give it a new schedule with update_task"
            )),
            TaskStatus::Paused => {
                // Repeating tasks continue from now rather than firing for
                // every time missed while paused; a once task keeps its time.
                let next_run = match task.schedule_kind {
                    ScheduleKind::Once => None,
                    kind => Some(schedule::first_run(
                        kind,
                        &task.schedule_value,
                        self.timezone,
                        now_millis(),
                    )?),
                };
                self.set_status(task_id, TaskStatus::Active, next_run)?;
                let next = next_run.or(task.next_run).map(|ms| self.local_time(ms));
                Ok(format!(
                    "Resumed task {task_id}; next run {}.",
                    next.unwrap_or_else(|| "not set".into())
                ))
            }
        }
    }

    fn set_status(
        &self,
        task_id: &str,
        status: TaskStatus,
        next_run: Option<i64>,
    ) -> Result<(), String> {
        match self.store.set_task_status(task_id, status, next_run) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("task {task_id} no longer exists")),
            Err(e) => Err(internal(e)),
        }
    }

    fn cancel_task(&self, caller: &Caller, task_id: &str) -> Outcome {
        self.own_task(caller, task_id)?;
        match self.store.delete_task(task_id) {
            Ok(_) => Ok(format!("Cancelled task {task_id}.")),
            Err(e) => Err(internal(e)),
        }
    }

    fn update_task(
        &self,
        caller: &Caller,
        task_id: &str,
        prompt: Option<&str>,
        schedule_type: Option<&str>,
        schedule_value: Option<&str>,
    ) -> Outcome {
        let task = self.own_task(caller, task_id)?;
        if prompt.is_none() && schedule_type.is_none() && schedule_value.is_none() {
            return Err("nothing to change: give prompt, schedule_type or schedule_value".into());
        }
        if prompt.is_some_and(|p| p.trim().is_empty()) {
            return Err("the task prompt is empty".into());
        }
        let schedule = match (schedule_type, schedule_value) {
            (None, None) => None,
            (Some(_), None) => {
                return Err("a new schedule_type needs a schedule_value too".into());
            }
            (kind, Some(value)) => {
                let kind = match kind {
                    Some(text) => schedule::parse_kind(text)?,
                    None => task.schedule_kind,
                };
                let value = value.trim();
                let next_run = schedule::first_run(kind, value, self.timezone, now_millis())?;
                Some((kind, value, next_run))
            }
        };
        match self.store.update_task(task_id, prompt, schedule) {
            Ok(true) => Ok(match schedule {
                Some((_, _, next_run)) => format!(
                    "Updated task {task_id}; next run {}.",
                    self.local_time(next_run)
                ),
                None => format!("Updated task {task_id}."),
            }),
            Ok(false) => Err(format!("task {task_id} no longer exists")),
            Err(e) => Err(internal(e)),
        }
    }

    fn register_group(
        &self,
        caller: &Caller,
        chat_id: String,
        name: String,
        folder: String,
        requires_trigger: Option<bool>,
        trigger: Option<String>,
    ) -> Outcome {
        may_register(caller)?;
        check_chat_id(&chat_id)?;
        let name = name.trim().to_string();
        if name.is_empty() {
            return Err("the group name is empty".into());
        }
        validate_folder(&folder).map_err(|e| e.to_string())?;
        let trigger = trigger
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        if let Some(pattern) = &trigger {
            crate::trigger::Trigger::new(pattern)
                .map_err(|e| format!("trigger {pattern:?} is not a valid regex: {e}"))?;
        }
        // Re-registering would overwrite the group (main could even demote
        // itself): changes to existing groups are for the operator's CLI.
        if let Some(existing) = self.store.group_by_chat(&chat_id).map_err(internal)? {
            return Err(format!(
                "{chat_id} is already registered (folder {}); change it with `talon groups` on the host",
                existing.folder
            ));
        }
        let group = RegisteredGroup {
            chat_id: chat_id.clone(),
            name,
            folder: folder.clone(),
            trigger_pattern: trigger,
            requires_trigger: requires_trigger.unwrap_or(true),
            is_main: false,
            container_config: None,
            added_at: now_millis(),
        };
        self.store
            .register_group(&group)
            .map_err(|e| e.to_string())?;
        let starter = self.group_starter.lock().ok().and_then(|s| s.clone());
        match starter {
            Some(start) => start(group).map_err(|e| {
                format!("registered {chat_id} as {folder}, but it cannot be served until talon restarts: {e}")
            })?,
            None => {
                tracing::warn!(group = %folder, "no running host to start the new group's queue");
                return Ok(format!(
                    "Registered {chat_id} as group {folder}; it is served from talon's next start."
                ));
            }
        }
        Ok(format!("Registered {chat_id} as group {folder}."))
    }

    async fn web_fetch(&self, _caller: &Caller, url: &str, max_bytes: Option<u64>) -> Outcome {
        if max_bytes == Some(0) {
            return Err("max_bytes must be at least 1".into());
        }
        let fetched = self.web.fetch(url, max_bytes).await?;
        Ok(fetched.to_content())
    }

    fn local_time(&self, ms: UnixMillis) -> String {
        self.timezone
            .timestamp_millis_opt(ms)
            .single()
            .map_or_else(|| ms.to_string(), |t| t.to_rfc3339())
    }
}

/// A failure of the host itself: logged in full, told to the model briefly.
fn internal(error: impl std::fmt::Display) -> String {
    tracing::error!(%error, "host action failed");
    format!("the host could not do this right now ({error}); try again later")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(folder: &str, is_main: bool) -> Caller {
        Caller {
            group_folder: folder.into(),
            chat_id: format!("term:{folder}"),
            is_main,
        }
    }

    fn group(folder: &str) -> RegisteredGroup {
        RegisteredGroup {
            chat_id: format!("term:{folder}"),
            name: folder.into(),
            folder: folder.into(),
            trigger_pattern: None,
            requires_trigger: true,
            is_main: folder == "main",
            container_config: None,
            added_at: 1,
        }
    }

    fn task(id: &str, folder: &str) -> TaskRow {
        TaskRow {
            id: id.into(),
            group_folder: folder.into(),
            chat_id: format!("term:{folder}"),
            prompt: "p".into(),
            schedule_kind: ScheduleKind::Interval,
            schedule_value: "60000".into(),
            context_mode: ContextMode::Isolated,
            next_run: Some(1),
            last_run: None,
            status: TaskStatus::Active,
            created_at: 1,
        }
    }

    #[test]
    fn who_may_message_which_chat() {
        let groups = [group("main"), group("alpha"), group("beta")];
        let main = caller("main", true);
        let alpha = caller("alpha", false);
        assert_eq!(may_message(&alpha, "term:alpha", &groups), Ok(()));
        let err = may_message(&alpha, "term:beta", &groups).unwrap_err();
        assert!(err.contains("only to its own chat"), "{err}");
        assert!(may_message(&alpha, "term:main", &groups).is_err());
        assert_eq!(may_message(&main, "term:beta", &groups), Ok(()));
        assert_eq!(may_message(&main, "term:main", &groups), Ok(()));
        let err = may_message(&main, "slack:unknown", &groups).unwrap_err();
        assert!(err.contains("not a registered chat"), "{err}");
    }

    #[test]
    fn where_tasks_may_be_scheduled() {
        let groups = [group("main"), group("alpha"), group("beta")];
        let alpha = caller("alpha", false);
        let own = ("alpha".to_string(), "term:alpha".to_string());
        assert_eq!(task_target(&alpha, None, &groups), Ok(own.clone()));
        assert_eq!(task_target(&alpha, Some("term:alpha"), &groups), Ok(own));
        assert!(task_target(&alpha, Some("term:beta"), &groups).is_err());
        let main = caller("main", true);
        assert_eq!(
            task_target(&main, Some("term:beta"), &groups),
            Ok(("beta".to_string(), "term:beta".to_string()))
        );
        assert!(task_target(&main, Some("term:nobody"), &groups).is_err());
    }

    #[test]
    fn who_may_manage_which_task() {
        let alpha = caller("alpha", false);
        assert_eq!(may_manage_task(&alpha, &task("t1", "alpha")), Ok(()));
        let err = may_manage_task(&alpha, &task("t2", "beta")).unwrap_err();
        assert_eq!(err, unknown_task("t2"), "refused as if unknown");
        assert_eq!(
            may_manage_task(&caller("main", true), &task("t2", "beta")),
            Ok(())
        );
    }

    #[test]
    fn only_main_registers() {
        assert!(may_register(&caller("main", true)).is_ok());
        let err = may_register(&caller("alpha", false)).unwrap_err();
        assert!(err.contains("only the main group"), "{err}");
    }

    #[test]
    fn chat_ids_need_a_channel_prefix() {
        for good in ["slack:C0123", "term:local", "dc:99:x", "sock:notes"] {
            assert_eq!(check_chat_id(good), Ok(()), "{good}");
        }
        for bad in ["C0123", ":x", "slack:", "", "sl ack:x", "slack:a b"] {
            assert!(check_chat_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
