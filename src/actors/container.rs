//! One actor per running agent container.
//!
//! It creates the container (bollard), attaches to its stdio, starts it and
//! speaks the wire protocol: it answers the runner's model requests through
//! the host's provider (the container holds no credentials and has no
//! network), forwards output and turn results to its group queue, and owns
//! the two timers of SPEC §5. The idle timer, reset by every output, sends the
//! close sentinel; the hard timer, reset by any activity (output, progress,
//! a request or its answer), kills a runner that has gone silent for longer
//! than the idle close plus its grace, so a working agent is never killed.
//!
//! Everything the runner sends is treated as the attacker's (SPEC §8): its
//! requests are admitted one per permit of a per-container in-flight bound
//! (the output stream is not read while none is free: backpressure into the
//! container's own pipe) and of a global one, and counted against the run's
//! [`RunBudget`] (model calls, tokens, bytes to chats, a host-action rate),
//! with `max_tokens` clamped to the configured cap. When the container exits the actor
//! writes the run log (`logs/containers/<folder>/`, outside every mount),
//! removes the container and stops.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};

use crate::actors::group_queue::GroupQueueMsg;
use crate::budget::{clamp_max_tokens, Limit, RunBudget, RunLimits};
use crate::deadline::{Deadline, Fired};
use crate::docker::{create_body, RunSpec};
use crate::host_actions::{Caller, HostActions};
use crate::lines::{Frame, LineSplitter};
use crate::messages::wire::{
    self, ErrorKind, HostAction, HostResult, HostToRunner, ModelFailure, ModelResult, RunResult,
    RunnerToHost, StartRun,
};
use crate::provider::proxy::MessagesProxy;
use crate::provider::Provider;

/// What the container reports to its group queue.
#[derive(Debug, Clone)]
pub enum ContainerEvent {
    /// Text for the user.
    Output { text: String },
    /// The close sentinel was sent: pipe nothing more into this container.
    Closing,
    /// A turn (the start or a follow-up) ended.
    TurnDone(RunResult),
    /// The container is gone.
    Exited(ExitReport),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExitReport {
    pub exit_code: Option<i64>,
    /// Killed by the hard timeout (exit 137).
    pub hard_killed: bool,
    /// Whether the run produced any output at all.
    pub had_output: bool,
    /// Why it could not run, when it never started.
    pub error: Option<String>,
}

pub enum ContainerMsg {
    /// A new batch for the running agent (the warm path).
    FollowUp(String),
    /// Ask the runner to finish and exit.
    Close,
    Inspect(RpcReplyPort<serde_json::Value>),
    // Internal: from the container's own tasks and timers.
    Stdout(RunnerToHost),
    /// A model or host request, holding its per-container in-flight permit.
    Request(RunnerToHost, OwnedSemaphorePermit),
    Stderr(String),
    StdoutClosed,
    Exited(Option<i64>),
    ModelAnswered {
        request_id: u64,
        result: wire::ModelResult,
    },
    HostAnswered {
        request_id: u64,
        result: wire::HostResult,
    },
    /// A piece of a proxied API answer, for the runner.
    ApiPart(HostToRunner),
    /// A proxied API call ended; its usage counts against the run.
    ApiDone {
        input_tokens: u64,
        output_tokens: u64,
    },
    /// The idle timer fired (see [`Deadline`]).
    IdleFired,
    /// The hard (silence) timer fired.
    HardFired,
}

pub struct ContainerArgs {
    pub docker: Docker,
    pub spec: RunSpec,
    pub start: StartRun,
    pub provider: Arc<dyn Provider>,
    pub queue: ActorRef<GroupQueueMsg>,
    pub idle_timeout: Duration,
    /// Silence (no output, progress or request) after which the runner is killed.
    pub hard_timeout: Duration,
    pub log_path: PathBuf,
    /// Performs the agent's host requests, as `caller`.
    pub actions: Arc<HostActions>,
    pub caller: Caller,
    /// What this run may spend (counted by the host, whatever the runner says).
    pub limits: RunLimits,
    /// Requests this container may have in flight at once.
    pub max_inflight: usize,
    /// Requests in flight across all containers.
    pub inflight_global: Arc<Semaphore>,
    /// The credential proxy for a Claude Code run; `None`: API requests
    /// are refused (the talon runtime never makes them).
    pub proxy: Option<Arc<MessagesProxy>>,
}

pub struct ContainerState {
    args: ContainerArgs,
    stdin: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
    /// Closes a runner that has been idle this long after its last output.
    idle: Deadline,
    /// Kills a runner silent this long; moved by every sign of life.
    hard: Deadline,
    /// The pending timer task of each deadline, aborted when the actor
    /// stops so it does not hold the actor until it fires.
    idle_timer: Option<AbortHandle>,
    hard_timer: Option<AbortHandle>,
    budget: RunBudget,
    inflight: Arc<Semaphore>,
    had_output: bool,
    hard_killed: bool,
    close_sent: bool,
    exit_code: Option<Option<i64>>,
    stdout_closed: bool,
    stderr_tail: String,
    removed: bool,
}

/// How long a stopping host lets a runner finish after the close sentinel.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How much of the runner's stderr the run log keeps.
const STDERR_KEEP: usize = 64 * 1024;

/// How long a write to the runner's stdin may block. A runner that stops
/// reading (broken, or flooding requests it never reads answers to) must not
/// wedge this actor, whose timers would then never fire.
const STDIN_WRITE_LIMIT: Duration = Duration::from_secs(30);

/// The least `max_tokens` a proxied Claude Code call may keep.
const CLAUDE_CODE_MIN_MAX_TOKENS: u32 = 32_000;

pub struct ContainerActor;

impl ContainerActor {
    async fn launch(
        args: &ContainerArgs,
        myself: &ActorRef<ContainerMsg>,
        inflight: Arc<Semaphore>,
    ) -> Result<
        (
            std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
            Vec<JoinHandle<()>>,
        ),
        String,
    > {
        let docker = &args.docker;
        let name = &args.spec.name;
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        docker
            .create_container(Some(options), create_body(&args.spec))
            .await
            .map_err(|e| format!("cannot create the container: {e}"))?;
        let attach = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let attached = docker
            .attach_container(name, Some(attach))
            .await
            .map_err(|e| format!("cannot attach to the container: {e}"))?;
        docker
            .start_container(name, None)
            .await
            .map_err(|e| format!("cannot start the container: {e}"))?;
        let reader = tokio::spawn(read_output(attached.output, myself.clone(), inflight));
        let waiter = tokio::spawn(wait_exit(docker.clone(), name.clone(), myself.clone()));
        Ok((attached.input, vec![reader, waiter]))
    }

    async fn send(state: &mut ContainerState, message: &HostToRunner) {
        let Some(stdin) = state.stdin.as_mut() else {
            return;
        };
        let line = match wire::encode_line(message) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a protocol line");
                return;
            }
        };
        let written = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        };
        match tokio::time::timeout(STDIN_WRITE_LIMIT, written).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // The runner is gone; its exit is reported by the wait task.
                tracing::debug!(container = %state.args.spec.name, error = %e, "stdin closed");
                state.stdin = None;
            }
            Err(_) => {
                tracing::warn!(container = %state.args.spec.name,
                    "the runner has not read its input for {}s; killing it", STDIN_WRITE_LIMIT.as_secs());
                state.stdin = None;
                Self::kill(state).await;
            }
        }
    }

    /// Sends the close sentinel once, and tells the queue first so it pipes
    /// nothing more into a runner that is about to exit.
    async fn close(state: &mut ContainerState) {
        if state.close_sent {
            return;
        }
        state.close_sent = true;
        let _ = state
            .args
            .queue
            .cast(GroupQueueMsg::Container(ContainerEvent::Closing));
        Self::send(state, &HostToRunner::Close).await;
    }

    /// Output: the idle timer counts from the last one. One timer task is
    /// pending at most, however much output comes.
    fn arm_idle(state: &mut ContainerState, myself: &ActorRef<ContainerMsg>) {
        let after = state.args.idle_timeout;
        if let Some(after) = state.idle.push(tokio::time::Instant::now(), after) {
            state.idle_timer = Some(Self::timer(myself, after, || ContainerMsg::IdleFired));
        }
    }

    /// Any sign of life: the hard timer counts from the last one.
    fn touch(state: &mut ContainerState, myself: &ActorRef<ContainerMsg>) {
        let after = state.args.hard_timeout;
        if let Some(after) = state.hard.push(tokio::time::Instant::now(), after) {
            state.hard_timer = Some(Self::timer(myself, after, || ContainerMsg::HardFired));
        }
    }

    fn timer(
        myself: &ActorRef<ContainerMsg>,
        after: Duration,
        msg: fn() -> ContainerMsg,
    ) -> AbortHandle {
        myself.send_after(after, msg).abort_handle()
    }

    async fn kill(state: &mut ContainerState) {
        if state.exit_code.is_some() {
            return;
        }
        let options = KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        if let Err(e) = state
            .args
            .docker
            .kill_container(&state.args.spec.name, Some(options))
            .await
        {
            tracing::warn!(container = %state.args.spec.name, error = %e, "kill failed");
        }
    }

    /// A run limit was hit: logged every time, told to the chat once.
    fn limit_hit(state: &mut ContainerState, limit: Limit) {
        tracing::warn!(container = %state.args.spec.name, group = %state.args.spec.group_folder,
            ?limit, "run limit reached; request refused");
        if state.budget.first_notice(limit) {
            let text = limit.notice(state.budget.limits());
            let _ = state
                .args
                .queue
                .cast(GroupQueueMsg::Container(ContainerEvent::Output { text }));
        }
    }

    /// Admits, clamps and starts one model or host request; a refused one
    /// is answered at once with the reason.
    async fn on_request(
        state: &mut ContainerState,
        myself: &ActorRef<ContainerMsg>,
        request: RunnerToHost,
        permit: OwnedSemaphorePermit,
    ) {
        let global = state.args.inflight_global.clone();
        let me = myself.clone();
        match request {
            RunnerToHost::ModelRequest {
                request_id,
                mut request,
            } => {
                if let Err(limit) = state.budget.admit_model_call() {
                    Self::limit_hit(state, limit);
                    let failure = ModelFailure {
                        kind: ErrorKind::Permanent,
                        message: limit.refusal(state.budget.limits()),
                    };
                    let result = ModelResult::Error(failure);
                    Self::send(state, &HostToRunner::ModelResponse { request_id, result }).await;
                    return;
                }
                request.max_tokens = clamp_max_tokens(
                    request.max_tokens,
                    state.budget.limits().max_tokens_per_call,
                );
                let provider = state.args.provider.clone();
                state.tasks.retain(|t| !t.is_finished());
                state.tasks.push(tokio::spawn(async move {
                    let _own = permit;
                    let _global = global.acquire_owned().await;
                    let result = match provider.complete(request).await {
                        Ok(reply) => wire::ModelResult::Ok(reply),
                        Err(failure) => wire::ModelResult::Error(failure),
                    };
                    let _ = me.cast(ContainerMsg::ModelAnswered { request_id, result });
                }));
            }
            RunnerToHost::HostRequest { request_id, action } => {
                let admitted = state
                    .budget
                    .admit_host_action(Instant::now())
                    .and_then(|()| match &action {
                        HostAction::SendMessage { text, .. } => {
                            state.budget.admit_output(text.len() as u64)
                        }
                        _ => Ok(()),
                    });
                if let Err(limit) = admitted {
                    Self::limit_hit(state, limit);
                    let result = HostResult::Error {
                        message: limit.refusal(state.budget.limits()),
                    };
                    Self::send(state, &HostToRunner::HostResponse { request_id, result }).await;
                    return;
                }
                // Authorised by who this container is, never by the request.
                let actions = state.args.actions.clone();
                let caller = state.args.caller.clone();
                state.tasks.retain(|t| !t.is_finished());
                state.tasks.push(tokio::spawn(async move {
                    let _own = permit;
                    let _global = global.acquire_owned().await;
                    let result = actions.perform(&caller, action).await;
                    let _ = me.cast(ContainerMsg::HostAnswered { request_id, result });
                }));
            }
            RunnerToHost::ApiRequest {
                request_id,
                request,
            } => Self::on_api_request(state, myself, request_id, request, permit).await,
            other => {
                // Only requests take a permit; anything else is handled as usual.
                drop(permit);
                Self::on_stdout(state, myself, other).await;
            }
        }
    }

    /// Claude Code's HTTP call: counted as a model call of the run, then
    /// handed to the credential proxy, whose answer streams back in pieces.
    async fn on_api_request(
        state: &mut ContainerState,
        myself: &ActorRef<ContainerMsg>,
        request_id: u64,
        request: wire::ApiRequest,
        permit: OwnedSemaphorePermit,
    ) {
        let refusal = match (&state.args.proxy, state.budget.admit_model_call()) {
            (None, _) => Some((
                403,
                "refused by talon: this run's runtime makes no API calls".to_string(),
            )),
            (Some(_), Err(limit)) => {
                Self::limit_hit(state, limit);
                Some((429, limit.refusal(state.budget.limits())))
            }
            (Some(_), Ok(())) => None,
        };
        if let Some((status, message)) = refusal {
            tracing::warn!(container = %state.args.spec.name, group = %state.args.spec.group_folder,
                path = %request.path, %message, "API request refused");
            for line in crate::provider::proxy::refusal_lines(request_id, status, &message) {
                Self::send(state, &line).await;
            }
            return;
        }
        let Some(proxy) = state.args.proxy.clone() else {
            return;
        };
        let global = state.args.inflight_global.clone();
        // Claude Code writes whole files in one tool call: a cap below its
        // own output size would cut them, so its floor is higher.
        let cap = state
            .budget
            .limits()
            .max_tokens_per_call
            .max(CLAUDE_CODE_MIN_MAX_TOKENS);
        let group = state.args.spec.group_folder.clone();
        let me = myself.clone();
        state.tasks.retain(|t| !t.is_finished());
        state.tasks.push(tokio::spawn(async move {
            let _own = permit;
            let _global = global.acquire_owned().await;
            let emit = |line: HostToRunner| {
                let _ = me.cast(ContainerMsg::ApiPart(line));
            };
            let outcome = proxy.forward(&group, request_id, request, cap, &emit).await;
            let _ = me.cast(ContainerMsg::ApiDone {
                input_tokens: outcome.input_tokens,
                output_tokens: outcome.output_tokens,
            });
        }));
    }

    /// Output, progress and turn results.
    async fn on_stdout(
        state: &mut ContainerState,
        myself: &ActorRef<ContainerMsg>,
        line: RunnerToHost,
    ) {
        match line {
            RunnerToHost::Output { text } => {
                Self::arm_idle(state, myself);
                state.had_output = true;
                match state.budget.admit_output(text.len() as u64) {
                    Ok(()) => {
                        let _ = state
                            .args
                            .queue
                            .cast(GroupQueueMsg::Container(ContainerEvent::Output { text }));
                    }
                    Err(limit) => Self::limit_hit(state, limit),
                }
            }
            RunnerToHost::Progress { .. } => Self::arm_idle(state, myself),
            RunnerToHost::Result(result) => {
                Self::arm_idle(state, myself);
                let _ = state
                    .args
                    .queue
                    .cast(GroupQueueMsg::Container(ContainerEvent::TurnDone(result)));
                if state.budget.mostly_spent() {
                    tracing::info!(container = %state.args.spec.name,
                        model_calls = state.budget.model_calls(), tokens = state.budget.tokens(),
                        "the run has spent half its budget; closing it so the next message starts a fresh one");
                    Self::close(state).await;
                }
            }
            RunnerToHost::ModelRequest { request_id, .. }
            | RunnerToHost::HostRequest { request_id, .. }
            | RunnerToHost::ApiRequest { request_id, .. } => {
                // Requests arrive as `Request`, with a permit; never here.
                tracing::warn!(container = %state.args.spec.name, request_id, "a request without an in-flight permit; ignored");
            }
        }
    }

    async fn remove(state: &mut ContainerState) {
        if state.removed {
            return;
        }
        state.removed = true;
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(e) = state
            .args
            .docker
            .remove_container(&state.args.spec.name, Some(options))
            .await
        {
            tracing::warn!(container = %state.args.spec.name, error = %e, "cannot remove container");
        }
    }

    fn write_run_log(state: &ContainerState) {
        let args = &state.args;
        let prompt = &args.start.prompt;
        let summary: String = prompt.chars().take(500).collect();
        let mounts: Vec<String> = args
            .spec
            .mounts
            .iter()
            .map(|m| {
                format!(
                    "{} -> {} ({})",
                    m.host.display(),
                    m.container,
                    if m.read_only { "ro" } else { "rw" }
                )
            })
            .collect();
        let exit = match state.exit_code {
            Some(Some(code)) => code.to_string(),
            _ => "unknown".into(),
        };
        let text = format!(
            "container: {}\nimage: {}\ngroup: {}\nstarted: {}\nduration_ms: {}\nexit_code: {}\n\
             hard_killed: {}\noutput_bytes: {}{}\nmodel_calls: {}\ntokens: {}\nmounts:\n  {}\n\
             input ({} chars): {}\n\n--- stderr ---\n{}\n",
            args.spec.name,
            args.spec.image,
            args.spec.group_folder,
            (chrono::Utc::now()
                - chrono::Duration::from_std(state.started.elapsed()).unwrap_or_default())
            .to_rfc3339(),
            state.started.elapsed().as_millis(),
            exit,
            state.hard_killed,
            state.budget.output_bytes(),
            if state.budget.hit(Limit::Output) {
                " (cut at the output cap)"
            } else {
                ""
            },
            state.budget.model_calls(),
            state.budget.tokens(),
            mounts.join("\n  "),
            prompt.chars().count(),
            summary,
            state.stderr_tail,
        );
        // The log lives outside every mount (`logs/containers/<folder>/`);
        // still, never follow a link or reuse a file that is already there.
        let written = args
            .log_path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| crate::safe_fs::create_new_private(&args.log_path))
            .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(path = %args.log_path.display(), error = %e, "cannot write the run log");
        }
    }

    async fn finish_if_done(state: &mut ContainerState, myself: &ActorRef<ContainerMsg>) {
        let (Some(exit_code), true) = (state.exit_code, state.stdout_closed) else {
            return;
        };
        Self::write_run_log(state);
        Self::remove(state).await;
        let report = ExitReport {
            exit_code,
            hard_killed: state.hard_killed,
            had_output: state.had_output,
            error: None,
        };
        let _ = state
            .args
            .queue
            .cast(GroupQueueMsg::Container(ContainerEvent::Exited(report)));
        myself.stop(None);
    }
}

impl Actor for ContainerActor {
    type Msg = ContainerMsg;
    type State = ContainerState;
    type Arguments = ContainerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ContainerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        crate::dump::register_inspectable(&myself, "container", ContainerMsg::Inspect);
        let limits = args.limits;
        let max_inflight = args.max_inflight.max(1);
        let mut state = ContainerState {
            args,
            stdin: None,
            tasks: Vec::new(),
            started: Instant::now(),
            idle: Deadline::default(),
            hard: Deadline::default(),
            idle_timer: None,
            hard_timer: None,
            budget: RunBudget::new(limits, Instant::now()),
            inflight: Arc::new(Semaphore::new(max_inflight)),
            had_output: false,
            hard_killed: false,
            close_sent: false,
            exit_code: None,
            stdout_closed: false,
            stderr_tail: String::new(),
            removed: false,
        };
        match Self::launch(&state.args, &myself, state.inflight.clone()).await {
            Ok((stdin, tasks)) => {
                state.stdin = Some(stdin);
                state.tasks = tasks;
                // Run time (and so the timers) count from the start.
                state.started = Instant::now();
            }
            Err(error) => {
                tracing::error!(container = %state.args.spec.name, %error, "container did not start");
                Self::remove(&mut state).await;
                let report = ExitReport {
                    exit_code: None,
                    hard_killed: false,
                    had_output: false,
                    error: Some(error),
                };
                let _ = state
                    .args
                    .queue
                    .cast(GroupQueueMsg::Container(ContainerEvent::Exited(report)));
                myself.stop(None);
                return Ok(state);
            }
        }
        let start = HostToRunner::Start(state.args.start.clone());
        Self::send(&mut state, &start).await;
        Self::arm_idle(&mut state, &myself);
        Self::touch(&mut state, &myself);
        tracing::info!(container = %state.args.spec.name, "container started");
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ContainerMsg::FollowUp(prompt) => {
                Self::send(state, &HostToRunner::FollowUp { prompt }).await;
            }
            ContainerMsg::Close => Self::close(state).await,
            ContainerMsg::Inspect(reply) => {
                let _ = reply.send(json!({
                    "container": state.args.spec.name,
                    "group": state.args.spec.group_folder,
                    "running_for_ms": state.started.elapsed().as_millis() as u64,
                    "output_bytes": state.budget.output_bytes(),
                    "model_calls": state.budget.model_calls(),
                    "tokens": state.budget.tokens(),
                    "requests_in_flight": state.args.max_inflight.max(1) - state.inflight.available_permits(),
                    "close_sent": state.close_sent,
                    "idle_timeout_ms": state.args.idle_timeout.as_millis() as u64,
                    "hard_timeout_ms": state.args.hard_timeout.as_millis() as u64,
                }));
            }
            ContainerMsg::Stdout(line) => {
                Self::touch(state, &myself);
                Self::on_stdout(state, &myself, line).await;
            }
            ContainerMsg::Request(request, permit) => {
                Self::touch(state, &myself);
                Self::on_request(state, &myself, request, permit).await;
            }
            ContainerMsg::HostAnswered { request_id, result } => {
                Self::touch(state, &myself);
                Self::send(state, &HostToRunner::HostResponse { request_id, result }).await;
            }
            ContainerMsg::ModelAnswered { request_id, result } => {
                Self::touch(state, &myself);
                if let ModelResult::Ok(reply) = &result {
                    state
                        .budget
                        .record_tokens(reply.input_tokens, reply.output_tokens);
                }
                Self::send(state, &HostToRunner::ModelResponse { request_id, result }).await;
            }
            ContainerMsg::ApiPart(line) => {
                Self::touch(state, &myself);
                Self::send(state, &line).await;
            }
            ContainerMsg::ApiDone {
                input_tokens,
                output_tokens,
            } => state.budget.record_tokens(input_tokens, output_tokens),
            ContainerMsg::Stderr(text) => {
                tracing::debug!(container = %state.args.spec.name, stderr = %text.trim_end());
                if state.stderr_tail.len() < STDERR_KEEP {
                    state.stderr_tail.push_str(&text);
                }
            }
            ContainerMsg::StdoutClosed => {
                state.stdout_closed = true;
                Self::finish_if_done(state, &myself).await;
            }
            ContainerMsg::Exited(code) => {
                state.exit_code = Some(code);
                state.stdin = None;
                Self::finish_if_done(state, &myself).await;
            }
            ContainerMsg::IdleFired => match state.idle.fired(tokio::time::Instant::now()) {
                Fired::Early(rest) => {
                    state.idle_timer = Some(Self::timer(&myself, rest, || ContainerMsg::IdleFired));
                }
                Fired::Expired if !state.close_sent => {
                    tracing::info!(container = %state.args.spec.name, "idle timeout: closing");
                    Self::close(state).await;
                }
                Fired::Expired | Fired::Nothing => {}
            },
            ContainerMsg::HardFired => match state.hard.fired(tokio::time::Instant::now()) {
                Fired::Early(rest) => {
                    state.hard_timer = Some(Self::timer(&myself, rest, || ContainerMsg::HardFired));
                }
                Fired::Expired if state.exit_code.is_none() => {
                    tracing::warn!(container = %state.args.spec.name,
                        silent_for_s = state.args.hard_timeout.as_secs(), "hard timeout: killing a silent runner");
                    state.hard_killed = true;
                    Self::kill(state).await;
                }
                Fired::Expired | Fired::Nothing => {}
            },
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for task in state.tasks.drain(..) {
            task.abort();
        }
        for timer in [state.idle_timer.take(), state.hard_timer.take()]
            .into_iter()
            .flatten()
        {
            timer.abort();
        }
        // Stopped before the container exited (host shutdown): let the
        // runner finish gracefully for a moment, then never leave it running.
        if state.exit_code.is_none() && !state.removed {
            Self::close(state).await;
            let mut wait = state
                .args
                .docker
                .wait_container(&state.args.spec.name, None);
            let code = match tokio::time::timeout(CLOSE_GRACE, wait.next()).await {
                Ok(Some(Ok(response))) => Some(response.status_code),
                Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError {
                    code, ..
                }))) => Some(code),
                _ => None,
            };
            state.exit_code = Some(code);
            Self::write_run_log(state);
        }
        Self::remove(state).await;
        crate::dump::unregister(&myself.get_cell());
        Ok(())
    }
}

/// Splits the attached output into protocol lines; stderr goes to the log.
/// A request line waits here for a permit of `inflight`, so a runner that
/// floods requests is simply not read: its pipe fills and it blocks.
async fn read_output(
    mut output: std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                > + Send,
        >,
    >,
    actor: ActorRef<ContainerMsg>,
    inflight: Arc<Semaphore>,
) {
    let mut lines = LineSplitter::new(wire::MAX_LINE_BYTES);
    while let Some(item) = output.next().await {
        match item {
            Ok(bollard::container::LogOutput::StdOut { message }) => {
                for line in lines.push(&message) {
                    match line {
                        Frame::Line(bytes) => {
                            if forward_line(&bytes, &actor, &inflight).await.is_err() {
                                return; // the actor is gone
                            }
                        }
                        Frame::TooLong(len) => tracing::warn!(
                            bytes = len,
                            "runner line over the protocol limit; discarded"
                        ),
                    }
                }
            }
            Ok(bollard::container::LogOutput::StdErr { message }) => {
                let _ = actor.cast(ContainerMsg::Stderr(
                    String::from_utf8_lossy(&message).into_owned(),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "attach stream ended with an error");
                break;
            }
        }
    }
    let _ = actor.cast(ContainerMsg::StdoutClosed);
}

async fn forward_line(
    bytes: &[u8],
    actor: &ActorRef<ContainerMsg>,
    inflight: &Arc<Semaphore>,
) -> Result<(), ()> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let message = match serde_json::from_slice::<RunnerToHost>(bytes) {
        Ok(message) => message,
        Err(e) => {
            let preview: String = String::from_utf8_lossy(bytes).chars().take(200).collect();
            tracing::warn!(error = %e, line = %preview, "runner line is not a protocol message; skipped");
            return Ok(());
        }
    };
    let sent = match message {
        RunnerToHost::ModelRequest { .. }
        | RunnerToHost::HostRequest { .. }
        | RunnerToHost::ApiRequest { .. } => {
            let permit = inflight.clone().acquire_owned().await.map_err(|_| ())?;
            actor.cast(ContainerMsg::Request(message, permit))
        }
        other => actor.cast(ContainerMsg::Stdout(other)),
    };
    sent.map_err(|_| ())
}

async fn wait_exit(docker: Docker, name: String, actor: ActorRef<ContainerMsg>) {
    let mut wait = docker.wait_container(&name, None);
    let code = match wait.next().await {
        Some(Ok(response)) => Some(response.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Some(code),
        Some(Err(e)) => {
            tracing::warn!(container = %name, error = %e, "wait failed");
            None
        }
        None => None,
    };
    let _ = actor.cast(ContainerMsg::Exited(code));
}
