//! The scheduler: fires scheduled tasks when they are due (SPEC §10).
//!
//! It sleeps until the earliest active task is due (at most a minute, so a
//! changed clock or a task added by hand is noticed), then for each due
//! task *claims* the due time in the store, moving the task on to its next
//! time (or completing it) before anything runs. So one due time fires at
//! most once, across crashes and restarts too; a run missed while talon was
//! down fires once, late. The task goes to its group's queue, which runs it
//! before waiting messages, and the outcome is written to the task's run
//! log. Task tools wake the scheduler, so a new or changed schedule counts
//! at once.

use std::time::{Duration, Instant};

use chrono_tz::Tz;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;

use crate::actors::group_queue::{queue_name, DueTask, GroupQueueMsg, TaskOutcome};
use crate::host_actions::schedule::next_run_after;
use crate::store::{now_millis, Store, TaskRow, TaskRunLog};

/// The scheduler's registry name.
pub const SCHEDULER: &str = "scheduler";

/// Asks the running scheduler to look at the tasks again (after a change).
pub fn wake_scheduler() {
    if let Some(cell) = ractor::registry::where_is(SCHEDULER) {
        let _ = cell.send_message(SchedulerMsg::Wake);
    }
}

pub enum SchedulerMsg {
    /// Look for due tasks now.
    Wake,
    /// The timer set by the look with this generation; older ones are void.
    Tick {
        generation: u64,
    },
    Inspect(RpcReplyPort<serde_json::Value>),
}

#[derive(Clone)]
pub struct SchedulerArgs {
    pub store: Store,
    pub timezone: Tz,
    /// How long a run's outcome is waited for before it is logged as lost.
    pub run_timeout: Duration,
    /// The longest sleep between looks.
    pub max_sleep: Duration,
}

pub struct Scheduler;

pub struct SchedulerState {
    args: SchedulerArgs,
    generation: u64,
    fired: u64,
    next_due: Option<i64>,
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SchedulerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        crate::dump::register_inspectable(&myself, "scheduler", SchedulerMsg::Inspect);
        myself.cast(SchedulerMsg::Wake)?;
        Ok(SchedulerState {
            args,
            generation: 0,
            fired: 0,
            next_due: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::Tick { generation } if generation != state.generation => {}
            SchedulerMsg::Wake | SchedulerMsg::Tick { .. } => {
                let now = now_millis();
                for task in state.args.store.due_tasks(now)? {
                    if Self::claim(state, &task, now)? {
                        state.fired += 1;
                        dispatch(task, &state.args);
                    }
                }
                state.generation += 1;
                state.next_due = state.args.store.next_task_due()?;
                let delay = sleep_until(state.next_due, now_millis(), state.args.max_sleep);
                let generation = state.generation;
                myself.send_after(delay, move || SchedulerMsg::Tick { generation });
            }
            SchedulerMsg::Inspect(reply) => {
                let _ = reply.send(json!({
                    "fired": state.fired,
                    "next_due": state.next_due,
                }));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        crate::dump::unregister(&myself.get_cell());
        Ok(())
    }
}

impl Scheduler {
    /// Moves `task` past its due time; `true` if this look may run it.
    fn claim(state: &SchedulerState, task: &TaskRow, now: i64) -> Result<bool, ActorProcessingErr> {
        let Some(due) = task.next_run else {
            return Ok(false);
        };
        let a = &state.args;
        match next_run_after(
            task.schedule_kind,
            &task.schedule_value,
            a.timezone,
            due,
            now,
        ) {
            Ok(next) => Ok(a.store.claim_task_run(&task.id, due, next, now)?),
            Err(reason) => {
                // Stored schedules were checked on the way in; one that no
                // longer parses is completed, with the reason in its log.
                tracing::error!(task = %task.id, %reason, "a stored task schedule is invalid; task completed");
                if a.store.claim_task_run(&task.id, due, None, now)? {
                    log_run(
                        &a.store,
                        &task.id,
                        now,
                        0,
                        Err(format!("invalid schedule: {reason}")),
                    );
                }
                Ok(false)
            }
        }
    }
}

/// How long to sleep before the next look.
pub fn sleep_until(next_due: Option<i64>, now: i64, max_sleep: Duration) -> Duration {
    match next_due {
        Some(due) => {
            let wait = u64::try_from(due.saturating_sub(now)).unwrap_or(0);
            Duration::from_millis(wait).min(max_sleep)
        }
        None => max_sleep,
    }
}

/// Hands a claimed task to its group's queue and logs the outcome.
fn dispatch(task: TaskRow, args: &SchedulerArgs) {
    let run_at = now_millis();
    let store = args.store.clone();
    let Some(queue) = ractor::registry::where_is(queue_name(&task.group_folder)) else {
        tracing::warn!(task = %task.id, group = %task.group_folder, "task due, but its group is not served");
        log_run(
            &store,
            &task.id,
            run_at,
            0,
            Err("the group is not served".into()),
        );
        return;
    };
    tracing::info!(task = %task.id, group = %task.group_folder, "task due; handed to its group");
    let (tx, rx) = tokio::sync::oneshot::channel::<TaskOutcome>();
    let due = DueTask {
        task_id: task.id.clone(),
        prompt: task.prompt.clone(),
        isolated: task.context_mode == crate::store::ContextMode::Isolated,
        done: Some(tx.into()),
    };
    if queue.send_message(GroupQueueMsg::TaskDue(due)).is_err() {
        log_run(
            &store,
            &task.id,
            run_at,
            0,
            Err("the group's queue is restarting".into()),
        );
        return;
    }
    let timeout = args.run_timeout;
    tokio::spawn(async move {
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout, rx).await;
        let duration = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let result = match outcome {
            Ok(Ok(outcome)) if outcome.success => Ok(outcome.output),
            Ok(Ok(outcome)) => Err(outcome.error.unwrap_or_else(|| "failed".into())),
            Ok(Err(_)) => Err("the group's queue stopped before the task finished".into()),
            Err(_) => Err(format!("no outcome within {timeout:?}")),
        };
        log_run(&store, &task.id, run_at, duration, result);
    });
}

fn log_run(
    store: &Store,
    task_id: &str,
    run_at: i64,
    duration_ms: i64,
    result: Result<String, String>,
) {
    let (status, result, error) = match result {
        Ok(output) => ("success", Some(output), None),
        Err(error) => ("error", None, Some(error)),
    };
    let run = TaskRunLog {
        task_id: task_id.to_string(),
        run_at,
        duration_ms,
        status: status.into(),
        result,
        error,
    };
    if let Err(e) = store.log_task_run(&run) {
        tracing::error!(task = %task_id, error = %e, "cannot log a task run");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_sleeps_until_the_next_task_but_never_long() {
        let minute = Duration::from_secs(60);
        assert_eq!(
            sleep_until(Some(10_500), 10_000, minute),
            Duration::from_millis(500)
        );
        assert_eq!(sleep_until(Some(9_000), 10_000, minute), Duration::ZERO);
        assert_eq!(sleep_until(Some(i64::MAX), 0, minute), minute);
        assert_eq!(sleep_until(None, 0, minute), minute);
    }
}
