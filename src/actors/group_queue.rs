//! One actor per registered group: it turns stored messages into agent runs.
//!
//! It waits for a global container slot (FIFO across groups), starts the
//! group's container with the messages after the group's cursor, pipes later
//! batches into the running container (the warm path), records replies in the
//! outbox together with the cursor, and applies the retry rules of
//! [`crate::retry`] when a run fails. A batch whose run fails before any
//! output never moves the cursor: the next attempt sees the same messages.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use crate::actors::container::{ContainerActor, ContainerArgs, ContainerEvent, ContainerMsg};
use crate::batch::{is_stale_session_error, select_batch, task_prompt};
use crate::container_config::GroupContainerConfig;
use crate::host::HostContext;
use crate::messages::channel::{channel_name, ChannelMsg};
use crate::messages::wire::{AgentRuntime, ErrorKind, RunStatus, StartRun, PROTOCOL_VERSION};
use crate::messages::{RegisteredGroup, StoredMessage};
use crate::provider::circuit::Circuit;
use crate::retry::{failure_notice, on_batch_failure, outage_notice, FailureDecision};
use crate::store::{FailedBatch, OutboxRow};
use crate::trigger::{message_wakes_agent, Trigger};

/// The registry name of a group's queue actor.
pub fn queue_name(folder: &str) -> String {
    format!("queue:{folder}")
}

pub enum GroupQueueMsg {
    /// New messages may be waiting (from the router, or recovery).
    Wake,
    /// A scheduled task of this group is due: it runs before waiting messages.
    TaskDue(DueTask),
    /// Another group waits for a container slot: an idle container here
    /// should close and free its slot.
    SlotWanted,
    /// A global container slot is ours.
    SlotGranted(OwnedSemaphorePermit),
    /// A retry delay has passed.
    RetryDue,
    Container(ContainerEvent),
    Inspect(RpcReplyPort<serde_json::Value>),
}

/// A due scheduled task, handed over by the scheduler.
pub struct DueTask {
    pub task_id: String,
    pub prompt: String,
    /// `context_mode = isolated`: a fresh session of its own, in a fresh
    /// container; the group's session is neither used nor moved.
    pub isolated: bool,
    /// Told how the run went (the scheduler logs it).
    pub done: Option<RpcReplyPort<TaskOutcome>>,
}

/// How a task run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutcome {
    pub task_id: String,
    pub success: bool,
    /// What the agent said, as delivered to the chat.
    pub output: String,
    pub error: Option<String>,
}

/// A task the agent is working on.
struct RunningTask {
    task_id: String,
    isolated: bool,
    output: String,
    done: Option<RpcReplyPort<TaskOutcome>>,
}

pub struct GroupQueueArgs {
    pub group: RegisteredGroup,
    pub ctx: Arc<HostContext>,
}

/// The batch the agent is working on.
#[derive(Debug, Clone)]
struct InFlight {
    from_seq: i64,
    through_seq: i64,
    thread_id: Option<String>,
    output_sent: bool,
}

struct Running {
    container: ActorRef<ContainerMsg>,
    /// The circuit of the provider this container's runs use.
    circuit: Option<Arc<Circuit>>,
    /// The close sentinel went out: new batches wait for a fresh container.
    closing: bool,
    /// Runs an isolated task: nothing else is piped in, and its session is
    /// never recorded as the group's.
    isolated: bool,
    _permit: OwnedSemaphorePermit,
}

pub struct GroupQueueState {
    group: RegisteredGroup,
    trigger: Trigger,
    ctx: Arc<HostContext>,
    running: Option<Running>,
    waiting_for_slot: bool,
    in_flight: Option<InFlight>,
    /// Due tasks, served before messages.
    due_tasks: std::collections::VecDeque<DueTask>,
    task_in_flight: Option<RunningTask>,
    /// Failures of the batch at the cursor so far.
    failures: u32,
    retry_pending: bool,
    /// Set by a stale-session failure: the next run starts fresh.
    last_error: Option<String>,
    /// The chat was told the provider is unreachable (once per outage).
    outage_noticed: bool,
}

pub struct GroupQueue;

/// The secret whose freshness the token manager checks before a start.
const THREADS_TOKEN: &str = crate::auth::threads::ACCESS_TOKEN_VAR;

/// How many pending messages a queue looks through for one that wakes the agent.
const PENDING_SCAN: usize = 10_000;

impl GroupQueue {
    /// The next batch to run, if anything after the cursor should wake the agent.
    fn next_batch(state: &GroupQueueState) -> Result<Vec<StoredMessage>, ActorProcessingErr> {
        let cursor = state.ctx.store.cursor(&state.group.chat_id)?;
        let pending = state
            .ctx
            .store
            .messages_after(&state.group.chat_id, cursor, PENDING_SCAN)?;
        let batch = select_batch(
            &pending,
            state.ctx.config.queue.max_messages_per_prompt,
            |m| message_wakes_agent(&state.group, &state.trigger, m),
        );
        Ok(batch.map(<[StoredMessage]>::to_vec).unwrap_or_default())
    }

    fn prompt_for(state: &GroupQueueState, batch: &[StoredMessage]) -> String {
        crate::prompt::format_prompt_within(
            batch,
            state.ctx.timezone,
            state.ctx.config.limits.max_prompt_bytes,
        )
    }

    /// The next work for the agent: a due task first, else a message batch.
    fn take_work(state: &mut GroupQueueState) -> Result<Option<String>, ActorProcessingErr> {
        if let Some(task) = state.due_tasks.pop_front() {
            let prompt = task_prompt(
                &task.task_id,
                &task.prompt,
                state.ctx.config.limits.max_prompt_bytes,
            );
            state.task_in_flight = Some(RunningTask {
                task_id: task.task_id,
                isolated: task.isolated,
                output: String::new(),
                done: task.done,
            });
            return Ok(Some(prompt));
        }
        Self::take_batch(state)
    }

    fn has_work(state: &GroupQueueState) -> Result<bool, ActorProcessingErr> {
        Ok(!state.due_tasks.is_empty() || !Self::next_batch(state)?.is_empty())
    }

    fn busy(state: &GroupQueueState) -> bool {
        state.in_flight.is_some() || state.task_in_flight.is_some() || state.retry_pending
    }

    /// Reports a finished task run to whoever handed it over.
    fn finish_task(state: &mut GroupQueueState, error: Option<String>) {
        if let Some(task) = state.task_in_flight.take() {
            let outcome = TaskOutcome {
                task_id: task.task_id,
                success: error.is_none(),
                output: task.output,
                error,
            };
            tracing::info!(group = %state.group.folder, task = %outcome.task_id, success = outcome.success, "task run finished");
            if let Some(done) = task.done {
                let _ = done.send(outcome);
            }
        }
    }

    fn take_batch(state: &mut GroupQueueState) -> Result<Option<String>, ActorProcessingErr> {
        let batch = Self::next_batch(state)?;
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(None);
        };
        state.in_flight = Some(InFlight {
            from_seq: first.seq,
            through_seq: last.seq,
            thread_id: last.thread_id.clone(),
            output_sent: false,
        });
        tell_channel(
            &state.group.chat_id,
            ChannelMsg::Working {
                chat_id: state.group.chat_id.clone(),
            },
        );
        Ok(Some(Self::prompt_for(state, &batch)))
    }

    /// The decision point after anything changes: start, pipe, or wait.
    async fn pump(
        myself: &ActorRef<GroupQueueMsg>,
        state: &mut GroupQueueState,
    ) -> Result<(), ActorProcessingErr> {
        if Self::busy(state) {
            return Ok(());
        }
        if let Some(running) = &state.running {
            if running.closing {
                return Ok(()); // the exit will pump again
            }
            // An isolated task needs a container of its own, and nothing
            // joins an isolated run: let this one go, the exit pumps again.
            let next_is_isolated = state.due_tasks.front().is_some_and(|t| t.isolated);
            if running.isolated || next_is_isolated {
                if Self::has_work(state)? {
                    Self::close_container(state);
                }
                return Ok(());
            }
            // Warm path: the agent is idle in its container; pipe the batch in.
            let container = running.container.clone();
            if let Some(prompt) = Self::take_work(state)? {
                container.cast(ContainerMsg::FollowUp(prompt))?;
            }
            return Ok(());
        }
        if state.waiting_for_slot || !Self::has_work(state)? {
            return Ok(());
        }
        state.waiting_for_slot = true;
        let slots = state.ctx.slots.clone();
        let waiting = state.ctx.slot_waiters.clone();
        if slots.available_permits() == 0 {
            ask_idle_containers_to_close(&state.group.folder);
        }
        let me = myself.clone();
        waiting.fetch_add(1, Ordering::SeqCst);
        // Semaphore waiters are served in FIFO order across groups.
        tokio::spawn(async move {
            let permit = slots.acquire_owned().await;
            waiting.fetch_sub(1, Ordering::SeqCst);
            if let Ok(permit) = permit {
                if me.cast(GroupQueueMsg::SlotGranted(permit)).is_err() {
                    tracing::debug!("queue stopped while waiting for a slot");
                }
            }
        });
        Ok(())
    }

    async fn start_container(
        myself: &ActorRef<GroupQueueMsg>,
        state: &mut GroupQueueState,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), ActorProcessingErr> {
        let Some(prompt) = Self::take_work(state)? else {
            return Ok(()); // nothing to do after all; the permit is released
        };
        // The group's settings may have changed (`talon groups set`) since
        // this queue started: every run uses the stored ones.
        if let Some(group) = state.ctx.store.group_by_chat(&state.group.chat_id)? {
            state.group = group;
        }
        let ctx = &state.ctx;
        let group = &state.group;
        let isolated = state.task_in_flight.as_ref().is_some_and(|t| t.isolated);
        let session = if isolated {
            None
        } else {
            ctx.store.session(&group.folder)?
        };
        let mut start = StartRun {
            protocol: PROTOCOL_VERSION,
            group_folder: group.folder.clone(),
            chat_id: group.chat_id.clone(),
            is_main: group.is_main,
            session_id: session.as_ref().map(|s| s.session_id.clone()),
            resume_at: session.and_then(|s| s.last_assistant_id),
            prompt,
            assistant_name: ctx.config.assistant.name.clone(),
            timezone: ctx.config.assistant.timezone.clone(),
            heartbeat_ms: None,
            runtime: Default::default(),
            model: None,
        };
        // A group given the Threads token gets a fresh one, or a clear
        // refusal: an expired token must not fail silently inside the agent.
        let needs_threads = GroupContainerConfig::of_group(group.container_config.as_deref())
            .is_ok_and(|c| c.secrets.iter().any(|s| s == THREADS_TOKEN));
        if needs_threads {
            if let Err(reason) = crate::actors::token_manager::threads_ready().await {
                tracing::warn!(group = %group.folder, %reason, "the Threads token cannot be used");
                drop(permit);
                if state.task_in_flight.is_some() {
                    Self::finish_task(state, Some(reason));
                } else {
                    Self::on_failure(myself, state, ErrorKind::Auth, reason).await?;
                }
                return Ok(());
            }
        }
        let ctx = &state.ctx;
        let group = &state.group;
        let runtime = crate::host::runtime_of(group, &ctx.config);
        if runtime == AgentRuntime::ClaudeCode {
            let ready = match ctx.claude_proxy {
                None => Err("cannot run Claude Code: talon has no Anthropic credential to put on its calls (sign in with `claude`, or set ANTHROPIC_API_KEY)".to_string()),
                Some(_) => ctx.ensure_runtime_image(runtime).await,
            };
            if let Err(reason) = ready {
                tracing::error!(group = %group.folder, %reason, "the group's runtime cannot start");
                drop(permit);
                if state.task_in_flight.is_some() {
                    Self::finish_task(state, Some(reason));
                } else {
                    Self::on_failure(myself, state, ErrorKind::Permanent, reason).await?;
                }
                return Ok(());
            }
            start.runtime = runtime;
            start.model = Some(
                GroupContainerConfig::of_group(group.container_config.as_deref())
                    .ok()
                    .and_then(|c| c.provider)
                    .and_then(|p| p.model)
                    .unwrap_or_else(|| ctx.config.provider.model.clone()),
            );
        }
        let ctx = &state.ctx;
        let group = &state.group;
        // The tier (and so the provider) is decided per run (spec §7).
        let (provider, _routing) = ctx.provider_for_batch(group, &start.prompt);
        let circuit = provider.circuit();
        let now = crate::store::now_millis();
        let plan = ctx.run_plan(group, now)?;
        let heartbeat = crate::docker::heartbeat_interval(plan.hard_timeout);
        start.heartbeat_ms = Some(heartbeat.as_millis() as u64);
        let spec = plan.spec;
        let log_path = ctx
            .paths
            .container_logs(&group.folder)
            .join(format!("container-{now}.log"));
        let container_name = spec.name.clone();
        let args = ContainerArgs {
            docker: ctx.docker.clone(),
            spec,
            start,
            provider,
            queue: myself.clone(),
            idle_timeout: ctx.config.container.idle_timeout,
            hard_timeout: plan.hard_timeout,
            log_path,
            actions: ctx.actions.clone(),
            caller: crate::host_actions::Caller {
                group_folder: group.folder.clone(),
                chat_id: group.chat_id.clone(),
                is_main: group.is_main,
            },
            limits: crate::budget::RunLimits::new(
                &ctx.config.limits,
                ctx.config.provider.max_tokens,
                ctx.config.container.max_output_bytes,
            ),
            max_inflight: ctx.config.limits.max_inflight_per_container,
            inflight_global: ctx.inflight.clone(),
            proxy: (runtime == AgentRuntime::ClaudeCode)
                .then(|| ctx.claude_proxy.clone())
                .flatten(),
        };
        let (container, _) = Actor::spawn_linked(
            Some(format!("container:{container_name}")),
            ContainerActor,
            args,
            myself.get_cell(),
        )
        .await?;
        state.running = Some(Running {
            container,
            circuit,
            isolated,
            closing: false,
            _permit: permit,
        });
        Ok(())
    }

    fn settle(state: &mut GroupQueueState, through_seq: i64) {
        state.in_flight = None;
        state.failures = 0;
        state.outage_noticed = false;
        notify_settled(&state.group.chat_id, through_seq);
    }

    fn on_output(state: &mut GroupQueueState, text: String) -> Result<(), ActorProcessingErr> {
        let visible = crate::outbound::strip_internal(&text);
        if let Some(task) = state.task_in_flight.as_mut() {
            // A task's output goes to the chat; it completes no messages.
            if !visible.is_empty() {
                if !task.output.is_empty() {
                    task.output.push('\n');
                }
                task.output.push_str(&visible);
                let row = state.ctx.store.record_task_output(
                    &state.group.chat_id,
                    &state.group.folder,
                    &visible,
                )?;
                deliver_row(row);
            }
            return Ok(());
        }
        let Some(batch) = state.in_flight.as_mut() else {
            // Output outside a batch (e.g. a note after the turn): still the user's.
            if !visible.is_empty() {
                let row = state.ctx.store.record_notice(
                    &state.group.chat_id,
                    &state.group.folder,
                    &visible,
                )?;
                deliver_row(row);
            }
            return Ok(());
        };
        if visible.is_empty() {
            return Ok(());
        }
        batch.output_sent = true;
        let row = state.ctx.store.record_reply(
            &state.group.chat_id,
            &state.group.folder,
            &visible,
            batch.thread_id.as_deref(),
            batch.through_seq,
        )?;
        deliver_row(row);
        Ok(())
    }

    async fn on_failure(
        myself: &ActorRef<GroupQueueMsg>,
        state: &mut GroupQueueState,
        kind: ErrorKind,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        let Some(batch) = state.in_flight.clone() else {
            return Ok(());
        };
        let decision = on_batch_failure(
            batch.output_sent,
            kind,
            state.failures,
            state.ctx.config.queue.max_retries,
            state.ctx.config.queue.retry_base,
        );
        tracing::warn!(group = %state.group.folder, %reason, ?decision, "batch failed");
        state.last_error = Some(reason.clone());
        match decision {
            FailureDecision::KeepCursor => Self::settle(state, batch.through_seq),
            FailureDecision::Retry { attempt, delay } => {
                state.in_flight = None;
                state.failures = attempt;
                state.retry_pending = true;
                myself.send_after(delay, || GroupQueueMsg::RetryDue);
            }
            FailureDecision::GiveUp { attempts } => {
                let failed = FailedBatch {
                    chat_id: state.group.chat_id.clone(),
                    group_folder: state.group.folder.clone(),
                    from_seq: batch.from_seq,
                    through_seq: batch.through_seq,
                    attempts,
                    reason: reason.clone(),
                    failed_at: crate::store::now_millis(),
                };
                let row = state
                    .ctx
                    .store
                    .fail_batch(&failed, &failure_notice(&reason, attempts))?;
                deliver_row(row);
                Self::settle(state, batch.through_seq);
            }
        }
        Ok(())
    }

    async fn on_event(
        myself: &ActorRef<GroupQueueMsg>,
        state: &mut GroupQueueState,
        event: ContainerEvent,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            ContainerEvent::Output { text } => Self::on_output(state, text)?,
            ContainerEvent::Closing => {
                if let Some(running) = state.running.as_mut() {
                    running.closing = true;
                }
            }
            ContainerEvent::TurnDone(result) => {
                let isolated = state.running.as_ref().is_some_and(|r| r.isolated);
                if let (Some(session_id), false) = (&result.session_id, isolated) {
                    state.ctx.store.set_session(
                        &state.group.folder,
                        session_id,
                        result.last_assistant_id.as_deref(),
                    )?;
                }
                if state.task_in_flight.is_some() {
                    let error = match result.status {
                        RunStatus::Success => None,
                        RunStatus::Error => Some(
                            result
                                .error
                                .unwrap_or_else(|| "the agent failed without saying why".into()),
                        ),
                    };
                    Self::finish_task(state, error);
                    if isolated {
                        // Its session ends with it.
                        Self::close_container(state);
                    }
                    Self::pump(myself, state).await?;
                    Self::yield_idle_slot(state);
                    return Ok(());
                }
                match result.status {
                    RunStatus::Success => {
                        if let Some(batch) = state.in_flight.clone() {
                            if !batch.output_sent {
                                state
                                    .ctx
                                    .store
                                    .complete_silently(&state.group.chat_id, batch.through_seq)?;
                            }
                            Self::settle(state, batch.through_seq);
                        }
                    }
                    RunStatus::Error => {
                        let reason = result
                            .error
                            .unwrap_or_else(|| "the agent failed without saying why".into());
                        if is_stale_session_error(&reason) && state.failures == 0 {
                            // The transcript is gone: start over with a fresh
                            // session, at once, without spending a retry.
                            state.ctx.store.clear_session(&state.group.folder)?;
                            state.in_flight = None;
                            Self::close_container(state);
                            return Ok(());
                        }
                        let kind = result.error_kind.unwrap_or(ErrorKind::Temporary);
                        let circuit = state.running.as_ref().and_then(|r| r.circuit.clone());
                        match (kind, circuit) {
                            (ErrorKind::Unavailable, Some(circuit)) => {
                                Self::pause_for_provider(myself, state, circuit, reason).await?;
                            }
                            _ => Self::on_failure(myself, state, kind, reason).await?,
                        }
                    }
                }
                Self::pump(myself, state).await?;
                Self::yield_idle_slot(state);
            }
            ContainerEvent::Exited(report) => {
                state.running = None; // releases the slot
                if state.task_in_flight.is_some() {
                    let reason = report
                        .error
                        .clone()
                        .unwrap_or_else(|| "the agent's container exited during the task".into());
                    Self::finish_task(state, Some(reason));
                }
                if state.in_flight.is_some() {
                    let reason = match (&report.error, report.exit_code) {
                        (Some(error), _) => error.clone(),
                        (None, _) if report.hard_killed => {
                            "the agent timed out before answering".to_string()
                        }
                        (None, Some(code)) => {
                            format!("the agent's container exited (code {code}) before answering")
                        }
                        (None, None) => "the agent's container vanished before answering".into(),
                    };
                    Self::on_failure(myself, state, ErrorKind::Temporary, reason).await?;
                }
                Self::pump(myself, state).await?;
            }
        }
        Ok(())
    }

    /// The provider is down: the batch waits (its cursor unmoved, no retry
    /// spent) until the provider's circuit closes, and the chat is told
    /// once. Output already sent settles it as any failure would.
    async fn pause_for_provider(
        myself: &ActorRef<GroupQueueMsg>,
        state: &mut GroupQueueState,
        circuit: Arc<Circuit>,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        let Some(batch) = state.in_flight.clone() else {
            return Ok(());
        };
        if batch.output_sent {
            return Self::on_failure(myself, state, ErrorKind::Unavailable, reason).await;
        }
        tracing::warn!(group = %state.group.folder, %reason, "provider unreachable: batch paused until it answers");
        state.in_flight = None;
        state.retry_pending = true;
        if !state.outage_noticed {
            state.outage_noticed = true;
            let row = state.ctx.store.record_notice(
                &state.group.chat_id,
                &state.group.folder,
                &outage_notice(&reason),
            )?;
            deliver_row(row);
        }
        let me = myself.clone();
        let closed = circuit.wait_closed();
        tokio::spawn(async move {
            closed.await;
            let _ = me.cast(GroupQueueMsg::RetryDue);
        });
        Ok(())
    }

    /// An idle container gives its slot up when another group waits for one.
    fn yield_idle_slot(state: &mut GroupQueueState) {
        let idle = state.running.as_ref().is_some_and(|r| !r.closing) && !Self::busy(state);
        if idle && state.ctx.slot_waiters.load(Ordering::SeqCst) > 0 {
            tracing::info!(group = %state.group.folder, "closing an idle container: another group waits for a slot");
            Self::close_container(state);
        }
    }

    fn close_container(state: &mut GroupQueueState) {
        if let Some(running) = state.running.as_mut() {
            running.closing = true;
            let _ = running.container.cast(ContainerMsg::Close);
        }
    }
}

/// Hands an outbox row to its chat's channel actor, which sends it and marks
/// it sent. A missing channel leaves the row in the outbox for the next start.
pub fn deliver_row(row: OutboxRow) {
    let channel = crate::messages::channel_of(&row.chat_id).to_string();
    match ractor::registry::where_is(channel_name(&channel)) {
        Some(cell) => {
            let chat = row.chat_id.clone();
            if cell.send_message(ChannelMsg::Deliver(row)).is_err() {
                tracing::warn!(%chat, "channel is not accepting messages; reply stays in the outbox");
            }
        }
        None => {
            tracing::warn!(chat = %row.chat_id, %channel, "no such channel running; reply stays in the outbox")
        }
    }
}

/// Tells every other group's queue that a slot is wanted.
fn ask_idle_containers_to_close(own_folder: &str) {
    let own = queue_name(own_folder);
    for name in ractor::registry::registered() {
        if name.starts_with("queue:") && name != own {
            if let Some(cell) = ractor::registry::where_is(name) {
                let _ = cell.send_message(GroupQueueMsg::SlotWanted);
            }
        }
    }
}

fn notify_settled(chat_id: &str, through_seq: i64) {
    tell_channel(
        chat_id,
        ChannelMsg::Settled {
            chat_id: chat_id.to_string(),
            through_seq,
        },
    );
}

/// Sends `message` to the channel actor serving `chat_id`, if it runs.
fn tell_channel(chat_id: &str, message: ChannelMsg) {
    let channel = crate::messages::channel_of(chat_id);
    if let Some(cell) = ractor::registry::where_is(channel_name(channel)) {
        let _ = cell.send_message(message);
    }
}

impl Actor for GroupQueue {
    type Msg = GroupQueueMsg;
    type State = GroupQueueState;
    type Arguments = GroupQueueArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: GroupQueueArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        crate::dump::register_inspectable(&myself, "group_queue", GroupQueueMsg::Inspect);
        // Recovery: whatever is after the cursor is looked at right away.
        myself.cast(GroupQueueMsg::Wake)?;
        let pattern = args
            .group
            .trigger_pattern
            .clone()
            .unwrap_or_else(|| args.ctx.config.trigger_pattern());
        let trigger = match Trigger::new(&pattern) {
            Ok(trigger) => trigger,
            Err(e) => {
                tracing::error!(group = %args.group.folder, %pattern, error = %e,
                    "invalid trigger pattern; the default is used");
                Trigger::new(&args.ctx.config.trigger_pattern())?
            }
        };
        Ok(GroupQueueState {
            trigger,
            group: args.group,
            ctx: args.ctx,
            running: None,
            waiting_for_slot: false,
            in_flight: None,
            due_tasks: std::collections::VecDeque::new(),
            task_in_flight: None,
            failures: 0,
            retry_pending: false,
            last_error: None,
            outage_noticed: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GroupQueueMsg::Wake => Self::pump(&myself, state).await?,
            GroupQueueMsg::SlotWanted => Self::yield_idle_slot(state),
            GroupQueueMsg::TaskDue(task) => {
                state.due_tasks.push_back(task);
                Self::pump(&myself, state).await?;
            }
            GroupQueueMsg::SlotGranted(permit) => {
                state.waiting_for_slot = false;
                if state.running.is_none() && !Self::busy(state) {
                    Self::start_container(&myself, state, permit).await?;
                }
            }
            GroupQueueMsg::RetryDue => {
                state.retry_pending = false;
                Self::pump(&myself, state).await?;
            }
            GroupQueueMsg::Container(event) => Self::on_event(&myself, state, event).await?,
            GroupQueueMsg::Inspect(reply) => {
                let cursor = state.ctx.store.cursor(&state.group.chat_id).unwrap_or(-1);
                let latest = state
                    .ctx
                    .store
                    .latest_seq(&state.group.chat_id)
                    .unwrap_or(-1);
                let _ = reply.send(json!({
                    "group": state.group.folder,
                    "chat": state.group.chat_id,
                    "cursor": cursor,
                    "pending_messages": (latest - cursor).max(0),
                    "container_running": state.running.is_some(),
                    "waiting_for_slot": state.waiting_for_slot,
                    "in_flight": state.in_flight.as_ref().map(|b| json!({
                        "from_seq": b.from_seq, "through_seq": b.through_seq, "output_sent": b.output_sent,
                    })),
                    "due_tasks": state.due_tasks.len(),
                    "task_running": state.task_in_flight.as_ref().map(|t| t.task_id.clone()),
                    "failures": state.failures,
                    "retry_pending": state.retry_pending,
                    "paused_for_provider": state.outage_noticed,
                    "provider": state.running.as_ref().and_then(|r| r.circuit.as_ref()).map(|c| c.describe()),
                    "last_error": state.last_error,
                }));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A container actor that crashed is a failed run, never a dead queue.
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            let ours = state
                .running
                .as_ref()
                .is_some_and(|r| r.container.get_id() == cell.get_id());
            if ours {
                tracing::error!(group = %state.group.folder, %error, "container actor crashed");
                let report = crate::actors::container::ExitReport {
                    exit_code: None,
                    hard_killed: false,
                    had_output: false,
                    error: Some(format!("the agent's container failed: {error}")),
                };
                Self::on_event(&myself, state, ContainerEvent::Exited(report)).await?;
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(running) = state.running.take() {
            // The container closes gracefully and writes its run log first.
            let _ = running
                .container
                .stop_and_wait(Some("queue stopped".into()), Some(SHUTDOWN_GRACE))
                .await;
        }
        crate::dump::unregister(&myself.get_cell());
        Ok(())
    }
}

/// How long a stopping host waits for containers to go away.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
