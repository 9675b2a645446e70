//! One actor per running agent container.
//!
//! It creates the container (bollard), attaches to its stdio, starts it and
//! speaks the wire protocol: it answers the runner's model requests through
//! the host's provider (the container holds no credentials and has no
//! network), forwards output and turn results to its group queue, and owns
//! the two timers of SPEC §5. The idle timer, reset by every output, sends the
//! close sentinel; the hard timer kills. When the container exits the actor
//! writes the run log, removes the container and stops.

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
use tokio::task::JoinHandle;

use crate::actors::group_queue::GroupQueueMsg;
use crate::docker::{create_body, RunSpec};
use crate::host_actions::{Caller, HostActions};
use crate::lines::{Frame, LineSplitter};
use crate::messages::wire::{self, HostToRunner, RunResult, RunnerToHost, StartRun};
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
    IdleFired(u64),
    HardFired,
}

pub struct ContainerArgs {
    pub docker: Docker,
    pub spec: RunSpec,
    pub start: StartRun,
    pub provider: Arc<dyn Provider>,
    pub queue: ActorRef<GroupQueueMsg>,
    pub idle_timeout: Duration,
    pub hard_timeout: Duration,
    pub max_output_bytes: u64,
    pub log_path: PathBuf,
    /// Performs the agent's host requests, as `caller`.
    pub actions: Arc<HostActions>,
    pub caller: Caller,
}

pub struct ContainerState {
    args: ContainerArgs,
    stdin: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
    idle_generation: u64,
    output_bytes: u64,
    output_cut: bool,
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

pub struct ContainerActor;

impl ContainerActor {
    async fn launch(
        args: &ContainerArgs,
        myself: &ActorRef<ContainerMsg>,
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
        let reader = tokio::spawn(read_output(attached.output, myself.clone()));
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
        if let Err(e) = written.await {
            // The runner is gone; its exit is reported by the wait task.
            tracing::debug!(container = %state.args.spec.name, error = %e, "stdin closed");
            state.stdin = None;
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

    fn arm_idle(state: &mut ContainerState, myself: &ActorRef<ContainerMsg>) {
        state.idle_generation += 1;
        let generation = state.idle_generation;
        myself.send_after(state.args.idle_timeout, move || {
            ContainerMsg::IdleFired(generation)
        });
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
             hard_killed: {}\noutput_bytes: {}{}\nmounts:\n  {}\ninput ({} chars): {}\n\n--- stderr ---\n{}\n",
            args.spec.name,
            args.spec.image,
            args.spec.group_folder,
            (chrono::Utc::now()
                - chrono::Duration::from_std(state.started.elapsed()).unwrap_or_default())
            .to_rfc3339(),
            state.started.elapsed().as_millis(),
            exit,
            state.hard_killed,
            state.output_bytes,
            if state.output_cut { " (cut at the output cap)" } else { "" },
            mounts.join("\n  "),
            prompt.chars().count(),
            summary,
            state.stderr_tail,
        );
        if let Some(dir) = args.log_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(&args.log_path, text) {
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
        let mut state = ContainerState {
            args,
            stdin: None,
            tasks: Vec::new(),
            started: Instant::now(),
            idle_generation: 0,
            output_bytes: 0,
            output_cut: false,
            had_output: false,
            hard_killed: false,
            close_sent: false,
            exit_code: None,
            stdout_closed: false,
            stderr_tail: String::new(),
            removed: false,
        };
        match Self::launch(&state.args, &myself).await {
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
        myself.send_after(state.args.hard_timeout, || ContainerMsg::HardFired);
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
                    "output_bytes": state.output_bytes,
                    "close_sent": state.close_sent,
                    "idle_timeout_ms": state.args.idle_timeout.as_millis() as u64,
                    "hard_timeout_ms": state.args.hard_timeout.as_millis() as u64,
                }));
            }
            ContainerMsg::Stdout(line) => match line {
                RunnerToHost::Output { text } => {
                    Self::arm_idle(state, &myself);
                    state.had_output = true;
                    state.output_bytes += text.len() as u64;
                    if state.output_bytes > state.args.max_output_bytes {
                        if !state.output_cut {
                            state.output_cut = true;
                            tracing::warn!(container = %state.args.spec.name, "output cap reached; further output dropped");
                            let note = "[talon: the agent's output was cut at the output cap]";
                            let _ = state.args.queue.cast(GroupQueueMsg::Container(
                                ContainerEvent::Output { text: note.into() },
                            ));
                        }
                    } else {
                        let _ = state
                            .args
                            .queue
                            .cast(GroupQueueMsg::Container(ContainerEvent::Output { text }));
                    }
                }
                RunnerToHost::Progress { .. } => Self::arm_idle(state, &myself),
                RunnerToHost::ModelRequest {
                    request_id,
                    request,
                } => {
                    let provider = state.args.provider.clone();
                    let me = myself.clone();
                    state.tasks.retain(|t| !t.is_finished());
                    state.tasks.push(tokio::spawn(async move {
                        let result = match provider.complete(request).await {
                            Ok(reply) => wire::ModelResult::Ok(reply),
                            Err(failure) => wire::ModelResult::Error(failure),
                        };
                        let _ = me.cast(ContainerMsg::ModelAnswered { request_id, result });
                    }));
                }
                RunnerToHost::HostRequest { request_id, action } => {
                    // Authorised by who this container is, never by the request.
                    let actions = state.args.actions.clone();
                    let caller = state.args.caller.clone();
                    let me = myself.clone();
                    state.tasks.retain(|t| !t.is_finished());
                    state.tasks.push(tokio::spawn(async move {
                        let result = actions.perform(&caller, action).await;
                        let _ = me.cast(ContainerMsg::HostAnswered { request_id, result });
                    }));
                }
                RunnerToHost::Result(result) => {
                    Self::arm_idle(state, &myself);
                    let _ = state
                        .args
                        .queue
                        .cast(GroupQueueMsg::Container(ContainerEvent::TurnDone(result)));
                }
            },
            ContainerMsg::HostAnswered { request_id, result } => {
                Self::send(state, &HostToRunner::HostResponse { request_id, result }).await;
            }
            ContainerMsg::ModelAnswered { request_id, result } => {
                Self::send(state, &HostToRunner::ModelResponse { request_id, result }).await;
            }
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
            ContainerMsg::IdleFired(generation) => {
                if generation == state.idle_generation && !state.close_sent {
                    tracing::info!(container = %state.args.spec.name, "idle timeout: closing");
                    Self::close(state).await;
                }
            }
            ContainerMsg::HardFired => {
                if state.exit_code.is_none() {
                    tracing::warn!(container = %state.args.spec.name, "hard timeout: killing");
                    state.hard_killed = true;
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
            }
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
async fn read_output(
    mut output: std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                > + Send,
        >,
    >,
    actor: ActorRef<ContainerMsg>,
) {
    let mut lines = LineSplitter::new(wire::MAX_LINE_BYTES);
    while let Some(item) = output.next().await {
        match item {
            Ok(bollard::container::LogOutput::StdOut { message }) => {
                for line in lines.push(&message) {
                    match line {
                        Frame::Line(bytes) => forward_line(&bytes, &actor),
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

fn forward_line(bytes: &[u8], actor: &ActorRef<ContainerMsg>) {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match serde_json::from_slice::<RunnerToHost>(bytes) {
        Ok(message) => {
            let _ = actor.cast(ContainerMsg::Stdout(message));
        }
        Err(e) => {
            let preview: String = String::from_utf8_lossy(bytes).chars().take(200).collect();
            tracing::warn!(error = %e, line = %preview, "runner line is not a protocol message; skipped");
        }
    }
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
