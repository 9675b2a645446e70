//! The one generic supervisor behind every subtree of talon's actor tree (the
//! root, the channel adapters, the group queues).
//!
//! A supervisor starts its children in order, watches them through ractor's
//! supervision links, and restarts them by policy (OneForOne / OneForAll and
//! Permanent / Transient / Temporary). Restarts wait a per-child backoff
//! (crash-loop backoff, SPEC §1 and §11) scheduled as a message to itself, so
//! the supervisor keeps answering (inspection, dynamic children) meanwhile.
//! Too many restarts within the intensity window escalate: the supervisor
//! stops its children and fails, and its own parent decides what to do.
//!
//! The decisions (is this restart allowed, which delay, does the counter
//! reset) are small pure functions tested on their own; the actor only
//! applies them.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::rpc::CallResult;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};
use serde::Serialize;
use tokio::time::Instant;

/// How long a child may take to run its `post_stop` when its supervisor stops
/// it (shutdown, OneForAll, StopChild, escalation) before it is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Which children restart when one of them exits and is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Only the child that exited.
    OneForOne,
    /// Every child: the others are stopped and all restart in spec order, for
    /// children that only make sense together.
    OneForAll,
}

impl Strategy {
    fn label(self) -> &'static str {
        match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
        }
    }
}

/// When a child is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always restarted.
    Permanent,
    /// Restarted only after a failure (panic/error), not after a normal stop.
    Transient,
    /// Never restarted; forgotten once it exits.
    Temporary,
}

impl Restart {
    fn label(self) -> &'static str {
        match self {
            Restart::Permanent => "permanent",
            Restart::Transient => "transient",
            Restart::Temporary => "temporary",
        }
    }
}

/// More than `max_restarts` restarts within `within` escalates: the supervisor
/// itself fails, so its parent sees ActorFailed. A child that stays up for
/// `within` also starts its backoff over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    pub max_restarts: u32,
    pub within: Duration,
}

/// Delay before the n-th consecutive restart of a child (n starts at 1).
#[derive(Clone)]
pub struct Backoff(Arc<dyn Fn(u32) -> Duration + Send + Sync>);

impl Backoff {
    /// Restart at once.
    pub fn none() -> Self {
        Backoff(Arc::new(|_| Duration::ZERO))
    }

    /// `base`, `2 * base`, `4 * base`, ... capped at `max`.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Backoff(Arc::new(move |n| {
            2u32.checked_pow(n.saturating_sub(1))
                .and_then(|factor| base.checked_mul(factor))
                .map_or(max, |delay| delay.min(max))
        }))
    }

    /// The delays in order; the last one repeats. No delays means no delay.
    pub fn sequence(delays: Vec<Duration>) -> Self {
        Backoff(Arc::new(move |n| {
            let index = usize::try_from(n.saturating_sub(1)).unwrap_or(usize::MAX);
            delays
                .get(index)
                .or_else(|| delays.last())
                .copied()
                .unwrap_or(Duration::ZERO)
        }))
    }

    /// The delay before the `n`-th consecutive restart.
    pub fn delay(&self, n: u32) -> Duration {
        (self.0)(n)
    }
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Backoff(..)")
    }
}

/// Starts one child. It receives the supervisor's cell and must spawn the
/// child linked to it (e.g. `Actor::spawn_linked(Some(name), actor, args,
/// supervisor)`), returning the child's cell. It runs inside the supervisor,
/// so it must not wait on the supervisor itself.
pub type StartFn =
    Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// One child: its name (unique within its supervisor), restart policy and how
/// to start it (again).
#[derive(Clone)]
pub struct ChildSpec {
    pub name: String,
    pub restart: Restart,
    pub start: StartFn,
}

impl ChildSpec {
    /// A child actor spawned as `name`, linked to the supervisor; `make` builds
    /// a fresh actor and its arguments for every (re)start.
    pub fn actor<A, F>(name: &str, restart: Restart, make: F) -> Self
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let actor_name = name.to_string();
        let make = Arc::new(make);
        ChildSpec {
            name: name.to_string(),
            restart,
            start: Arc::new(move |supervisor| {
                let (actor, arguments) = make();
                let actor_name = actor_name.clone();
                Box::pin(async move {
                    // The join handle is not needed: the supervision link reports the exit.
                    let (child, _join) =
                        A::spawn_linked(Some(actor_name), actor, arguments, supervisor).await?;
                    Ok(child.get_cell())
                })
            }),
        }
    }

    /// A nested supervisor named `name`; `make_spec` builds its spec for every
    /// (re)start, so a restarted subtree starts from its spec again.
    pub fn supervisor<F>(name: &str, restart: Restart, make_spec: F) -> Self
    where
        F: Fn() -> SupervisorSpec + Send + Sync + 'static,
    {
        Self::actor(name, restart, move || (Supervisor, make_spec()))
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .finish_non_exhaustive()
    }
}

/// What a supervisor starts with.
#[derive(Debug, Clone)]
pub struct SupervisorSpec {
    pub strategy: Strategy,
    pub intensity: Intensity,
    pub backoff: Backoff,
    pub children: Vec<ChildSpec>,
}

/// Identifies one scheduled restart, so a superseded one (the child was
/// stopped, or a newer OneForAll restart replaced it) does nothing. Only this
/// module can make one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartToken(u64);

/// What a supervisor is asked to do (besides the supervision events ractor
/// delivers from its children).
pub enum SupervisorMsg {
    /// Adds a dynamic child (e.g. a new group's queue). A name already
    /// supervised is an error; a child that fails to start is not added.
    StartChild(ChildSpec, Option<RpcReplyPort<Result<(), String>>>),
    /// Stops a child and forgets it (no restart).
    StopChild(String),
    /// Asks for the supervisor's current state.
    Inspect(RpcReplyPort<SupervisorReport>),
    /// A restart whose backoff has elapsed (sent by the supervisor to itself).
    #[doc(hidden)]
    RestartDue(RestartToken),
}

/// A supervisor's state as shown by `Inspect` and the state dump.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisorReport {
    pub strategy: String,
    pub children: Vec<ChildReport>,
    pub restarts_in_window: u32,
}

/// One child in a [`SupervisorReport`].
#[derive(Debug, Clone, Serialize)]
pub struct ChildReport {
    pub name: String,
    pub restart: String,
    pub running: bool,
    /// Successful restarts since the child was added.
    pub restarts: u32,
    pub last_failure: Option<String>,
    pub next_restart_in_ms: Option<u64>,
}

/// The restarts of one supervisor within its intensity window.
#[derive(Debug, Clone)]
pub struct RestartWindow {
    intensity: Intensity,
    restarts: VecDeque<Instant>,
}

impl RestartWindow {
    pub fn new(intensity: Intensity) -> Self {
        RestartWindow {
            intensity,
            restarts: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; true while the restarts within the window
    /// (this one included) are at most `max_restarts`.
    pub fn record(&mut self, now: Instant) -> bool {
        while let Some(&oldest) = self.restarts.front() {
            if now.saturating_duration_since(oldest) >= self.intensity.within {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        self.restarts.push_back(now);
        self.restarts.len() <= usize::try_from(self.intensity.max_restarts).unwrap_or(usize::MAX)
    }

    /// The restarts recorded within the window that ends at `now`.
    pub fn count(&self, now: Instant) -> u32 {
        let recent = self
            .restarts
            .iter()
            .filter(|&&at| now.saturating_duration_since(at) < self.intensity.within)
            .count();
        u32::try_from(recent).unwrap_or(u32::MAX)
    }
}

/// Whether a child that exited is restarted: `failed` is a panic or an error
/// (ActorFailed), otherwise it stopped normally.
pub fn should_restart(restart: Restart, failed: bool) -> bool {
    match restart {
        Restart::Permanent => true,
        Restart::Transient => failed,
        Restart::Temporary => false,
    }
}

/// The consecutive-restart count for a child that exits after running for
/// `ran_for`: one that stayed up for `stable_after` starts its backoff over.
pub fn next_consecutive(previous: u32, ran_for: Duration, stable_after: Duration) -> u32 {
    if ran_for >= stable_after {
        1
    } else {
        previous.saturating_add(1)
    }
}

/// The supervisor actor; spawn it with [`spawn_supervisor`] or as a child
/// with [`ChildSpec::supervisor`].
pub struct Supervisor;

/// Spawns a supervisor named `name`, linked to `parent` when given.
pub async fn spawn_supervisor(
    name: &str,
    spec: SupervisorSpec,
    parent: Option<ActorCell>,
) -> Result<(ActorRef<SupervisorMsg>, tokio::task::JoinHandle<()>), SpawnErr> {
    match parent {
        Some(parent) => {
            Supervisor::spawn_linked(Some(name.to_string()), Supervisor, spec, parent).await
        }
        None => Supervisor::spawn(Some(name.to_string()), Supervisor, spec).await,
    }
}

/// A restart waiting for its backoff.
#[derive(Debug, Clone, Copy)]
struct PendingRestart {
    token: RestartToken,
    /// None when the delay is too large to represent as an instant.
    due: Option<Instant>,
}

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    started_at: Instant,
    restarts: u32,
    consecutive: u32,
    last_failure: Option<String>,
    pending: Option<PendingRestart>,
}

impl Child {
    fn running(spec: ChildSpec, cell: ActorCell) -> Self {
        Child {
            spec,
            cell: Some(cell),
            started_at: Instant::now(),
            restarts: 0,
            consecutive: 0,
            last_failure: None,
            pending: None,
        }
    }

    fn is_cell(&self, id: ActorId) -> bool {
        self.cell.as_ref().is_some_and(|cell| cell.get_id() == id)
    }

    fn report(&self, now: Instant) -> ChildReport {
        ChildReport {
            name: self.spec.name.clone(),
            restart: self.spec.restart.label().to_string(),
            running: self.cell.is_some(),
            restarts: self.restarts,
            last_failure: self.last_failure.clone(),
            next_restart_in_ms: self.pending.map(|pending| match pending.due {
                Some(due) => millis(due.saturating_duration_since(now)),
                None => u64::MAX,
            }),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The supervisor's private state (ractor needs the type to be public).
pub struct SupervisorState {
    strategy: Strategy,
    intensity: Intensity,
    backoff: Backoff,
    window: RestartWindow,
    /// In start order: the spec's children, then dynamic ones.
    children: Vec<Child>,
    next_token: u64,
}

/// Runs a child's start function and checks that the result is supervised by
/// us: an unlinked child would never be restarted.
async fn start_child(supervisor: &ActorCell, spec: &ChildSpec) -> Result<ActorCell, String> {
    let cell = (spec.start)(supervisor.clone())
        .await
        .map_err(|err| format!("child `{}` failed to start: {err}", spec.name))?;
    let linked = supervisor
        .get_children()
        .iter()
        .any(|child| child.get_id() == cell.get_id());
    if !linked {
        shut_down(&cell).await;
        return Err(format!(
            "child `{}` is not linked to its supervisor (spawned unlinked, or exited at once)",
            spec.name
        ));
    }
    Ok(cell)
}

/// Stops a child gracefully, killing it if it does not finish in time, and
/// waits so its registered name is free for a restart.
async fn shut_down(cell: &ActorCell) {
    let stopped = cell
        .stop_and_wait(
            Some("stopped by supervisor".to_string()),
            Some(SHUTDOWN_TIMEOUT),
        )
        .await;
    if let Err(ractor::RactorErr::Timeout) = stopped {
        tracing::warn!(
            child = cell.get_name().unwrap_or_default(),
            "child did not stop in time; killing it"
        );
        // An error here means it is already gone, which is what we want.
        let _ = cell.kill_and_wait(Some(SHUTDOWN_TIMEOUT)).await;
    }
}

fn send_restart_due(myself: &ActorRef<SupervisorMsg>, delay: Duration, token: RestartToken) {
    if delay.is_zero() {
        // Failing to send to ourselves means we are stopping: nothing to restart.
        let _ = myself.send_message(SupervisorMsg::RestartDue(token));
    } else {
        myself.send_after(delay, move || SupervisorMsg::RestartDue(token));
    }
}

impl SupervisorState {
    fn report(&self) -> SupervisorReport {
        let now = Instant::now();
        SupervisorReport {
            strategy: self.strategy.label().to_string(),
            children: self
                .children
                .iter()
                .map(|child| child.report(now))
                .collect(),
            restarts_in_window: self.window.count(now),
        }
    }

    fn token(&mut self) -> RestartToken {
        self.next_token = self.next_token.wrapping_add(1);
        RestartToken(self.next_token)
    }

    /// Stops every running child, last started first. Their exit events are
    /// ignored because they are no longer recorded as running. Temporary
    /// children stopped this way are forgotten (they are never restarted).
    async fn stop_running_children(&mut self) {
        for child in self.children.iter_mut().rev() {
            if let Some(cell) = child.cell.take() {
                shut_down(&cell).await;
                crate::dump::unregister(&cell);
            }
        }
        self.children
            .retain(|child| child.spec.restart != Restart::Temporary || child.pending.is_some());
    }

    /// A known child exited: restart it (or all) by policy.
    async fn on_child_exit(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: ActorId,
        failure: Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(index) = self.children.iter().position(|child| child.is_cell(id)) else {
            // Not (or no longer) ours: a child we stopped on purpose, or an
            // actor linked to us by someone else.
            tracing::trace!(actor = %id, "ignoring exit of an unsupervised actor");
            return Ok(());
        };
        let stable_after = self.intensity.within;
        let child = &mut self.children[index];
        if let Some(cell) = child.cell.take() {
            // Its own post_stop may not have run (panic), so clean up for it.
            crate::dump::unregister(&cell);
        }
        let ran_for = Instant::now().saturating_duration_since(child.started_at);
        let failed = failure.is_some();
        match failure {
            Some(reason) => {
                tracing::warn!(child = %child.spec.name, %reason, "supervised child failed");
                child.last_failure = Some(reason);
            }
            None => tracing::info!(child = %child.spec.name, "supervised child stopped"),
        }
        if !should_restart(child.spec.restart, failed) {
            self.children.remove(index);
            return Ok(());
        }
        child.consecutive = next_consecutive(child.consecutive, ran_for, stable_after);
        self.schedule_restart(myself, index).await
    }

    /// Counts a restart of child `index` against the intensity and schedules it
    /// (OneForAll: stops the others and schedules them all) after its backoff.
    async fn schedule_restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        index: usize,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        let Some(child) = self.children.get(index) else {
            return Ok(());
        };
        let name = child.spec.name.clone();
        let delay = self.backoff.delay(child.consecutive);
        if !self.window.record(now) {
            return self.escalate(myself, &name).await;
        }
        let pending = PendingRestart {
            token: self.token(),
            due: now.checked_add(delay),
        };
        match self.strategy {
            Strategy::OneForOne => {
                if let Some(child) = self.children.get_mut(index) {
                    child.pending = Some(pending);
                }
            }
            Strategy::OneForAll => {
                // Mark first so the stopped siblings count as awaiting this restart.
                for child in &mut self.children {
                    if child.spec.restart != Restart::Temporary {
                        child.pending = Some(pending);
                    }
                }
                self.stop_running_children().await;
            }
        }
        tracing::info!(child = %name, delay_ms = millis(delay), "restart scheduled");
        send_restart_due(myself, delay, pending.token);
        Ok(())
    }

    /// Starts the children waiting for `token`, in order. A failed start counts
    /// as a failure of that child and is scheduled again.
    async fn restart_due(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: RestartToken,
    ) -> Result<(), ActorProcessingErr> {
        let supervisor = myself.get_cell();
        let mut index = 0;
        while index < self.children.len() {
            let child = &mut self.children[index];
            if child.pending.map(|pending| pending.token) != Some(token) {
                index += 1;
                continue;
            }
            child.pending = None;
            match start_child(&supervisor, &child.spec).await {
                Ok(cell) => {
                    tracing::info!(child = %child.spec.name, "supervised child restarted");
                    child.cell = Some(cell);
                    child.started_at = Instant::now();
                    child.restarts = child.restarts.saturating_add(1);
                }
                Err(reason) => {
                    tracing::warn!(child = %child.spec.name, %reason, "restart failed");
                    child.last_failure = Some(reason);
                    child.consecutive = child.consecutive.saturating_add(1);
                    return self.schedule_restart(myself, index).await;
                }
            }
            index += 1;
        }
        Ok(())
    }

    /// Too many restarts: stop everything and fail, so the parent decides.
    async fn escalate(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        child: &str,
    ) -> Result<(), ActorProcessingErr> {
        let why = format!(
            "supervisor `{}`: more than {} restarts within {:?} (last: child `{child}`)",
            myself.get_name().unwrap_or_default(),
            self.intensity.max_restarts,
            self.intensity.within,
        );
        tracing::error!(%why, "restart intensity exceeded; escalating");
        for child in &mut self.children {
            child.pending = None;
        }
        self.stop_running_children().await;
        // post_stop does not run for a failed actor.
        crate::dump::unregister(&myself.get_cell());
        Err(why.into())
    }

    async fn add_child(&mut self, supervisor: &ActorCell, spec: ChildSpec) -> Result<(), String> {
        if self
            .children
            .iter()
            .any(|child| child.spec.name == spec.name)
        {
            return Err(format!("child `{}` is already supervised", spec.name));
        }
        let cell = start_child(supervisor, &spec).await?;
        self.children.push(Child::running(spec, cell));
        Ok(())
    }

    async fn remove_child(&mut self, name: &str) {
        let Some(index) = self
            .children
            .iter()
            .position(|child| child.spec.name == name)
        else {
            tracing::debug!(child = name, "StopChild for an unknown child");
            return;
        };
        // Removing it first cancels any pending restart and makes its exit
        // event unknown, so it is not restarted.
        let child = self.children.remove(index);
        if let Some(cell) = child.cell {
            shut_down(&cell).await;
            crate::dump::unregister(&cell);
        }
    }
}

fn inspector(actor: ActorRef<SupervisorMsg>) -> crate::dump::Inspector {
    Arc::new(move || {
        let actor = actor.clone();
        Box::pin(async move {
            match actor.call(SupervisorMsg::Inspect, None).await {
                Ok(CallResult::Success(report)) => serde_json::to_value(report).ok(),
                _ => None,
            }
        })
    })
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorSpec;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        spec: SupervisorSpec,
    ) -> Result<Self::State, ActorProcessingErr> {
        let supervisor = myself.get_cell();
        let mut state = SupervisorState {
            strategy: spec.strategy,
            intensity: spec.intensity,
            backoff: spec.backoff,
            window: RestartWindow::new(spec.intensity),
            children: Vec::with_capacity(spec.children.len()),
            next_token: 0,
        };
        for child in spec.children {
            match start_child(&supervisor, &child).await {
                Ok(cell) => state.children.push(Child::running(child, cell)),
                Err(reason) => {
                    // Release the started ones (and their names) before failing.
                    state.stop_running_children().await;
                    return Err(reason.into());
                }
            }
        }
        crate::dump::register(&supervisor, "supervisor", Some(inspector(myself.clone())));
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Stop children gracefully (ractor would kill them, skipping their post_stop).
        for child in &mut state.children {
            child.pending = None;
        }
        state.stop_running_children().await;
        crate::dump::unregister(&myself.get_cell());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::StartChild(spec, reply) => {
                let result = state.add_child(&myself.get_cell(), spec).await;
                if let Err(reason) = &result {
                    tracing::warn!(%reason, "StartChild refused");
                }
                if let Some(reply) = reply {
                    // The caller may have stopped waiting; nothing to do then.
                    let _ = reply.send(result);
                }
            }
            SupervisorMsg::StopChild(name) => state.remove_child(&name).await,
            SupervisorMsg::Inspect(reply) => {
                let _ = reply.send(state.report());
            }
            SupervisorMsg::RestartDue(token) => return state.restart_due(&myself, token).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                state
                    .on_child_exit(&myself, cell.get_id(), Some(err.to_string()))
                    .await
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.on_child_exit(&myself, cell.get_id(), None).await
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

    // ---- pure decisions ----

    fn intensity(max_restarts: u32, within_secs: u64) -> Intensity {
        Intensity {
            max_restarts,
            within: Duration::from_secs(within_secs),
        }
    }

    #[test]
    fn window_allows_up_to_max_restarts_within_the_period() {
        let start = Instant::now();
        let mut window = RestartWindow::new(intensity(2, 10));
        assert!(window.record(start));
        assert!(window.record(start + Duration::from_secs(1)));
        assert!(!window.record(start + Duration::from_secs(2)));
        assert_eq!(window.count(start + Duration::from_secs(2)), 3);
    }

    #[test]
    fn window_forgets_restarts_older_than_the_period() {
        let start = Instant::now();
        let mut window = RestartWindow::new(intensity(2, 10));
        assert!(window.record(start));
        assert!(window.record(start + Duration::from_secs(5)));
        // The first restart is exactly 10 s old: out of the window.
        assert!(window.record(start + Duration::from_secs(10)));
        assert_eq!(window.count(start + Duration::from_secs(10)), 2);
        assert_eq!(window.count(start + Duration::from_secs(30)), 0);
        assert!(window.record(start + Duration::from_secs(30)));
    }

    #[test]
    fn window_with_zero_max_restarts_refuses_every_restart() {
        let mut window = RestartWindow::new(intensity(0, 10));
        assert!(!window.record(Instant::now()));
    }

    #[test]
    fn restart_policies() {
        assert!(should_restart(Restart::Permanent, true));
        assert!(should_restart(Restart::Permanent, false));
        assert!(should_restart(Restart::Transient, true));
        assert!(!should_restart(Restart::Transient, false));
        assert!(!should_restart(Restart::Temporary, true));
        assert!(!should_restart(Restart::Temporary, false));
    }

    #[test]
    fn consecutive_count_grows_until_the_child_ran_stably() {
        let stable = Duration::from_secs(60);
        assert_eq!(next_consecutive(0, Duration::ZERO, stable), 1);
        assert_eq!(next_consecutive(3, Duration::from_secs(59), stable), 4);
        assert_eq!(next_consecutive(3, Duration::from_secs(60), stable), 1);
        assert_eq!(next_consecutive(u32::MAX, Duration::ZERO, stable), u32::MAX);
    }

    #[test]
    fn exponential_backoff_doubles_up_to_its_cap() {
        let backoff = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<u64> = (1..=6).map(|n| backoff.delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff.delay(200), Duration::from_secs(10));
    }

    #[test]
    fn sequence_backoff_repeats_its_last_delay() {
        // The channel adapters' crash-loop delays (SPEC §11).
        let secs = [0, 0, 10, 30, 120, 300, 900];
        let backoff = Backoff::sequence(secs.iter().map(|&s| Duration::from_secs(s)).collect());
        for (n, expected) in (1..).zip(secs) {
            assert_eq!(backoff.delay(n), Duration::from_secs(expected));
        }
        assert_eq!(backoff.delay(8), Duration::from_secs(900));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(900));
        assert_eq!(Backoff::sequence(Vec::new()).delay(3), Duration::ZERO);
        assert_eq!(Backoff::none().delay(7), Duration::ZERO);
    }

    // ---- the actor ----

    /// What a test worker reports about its lives.
    #[derive(Clone, Default)]
    struct Probe {
        starts: Arc<AtomicU32>,
        stops: Arc<AtomicU32>,
        refuse_start: Arc<AtomicBool>,
    }

    impl Probe {
        fn starts(&self) -> u32 {
            self.starts.load(Ordering::SeqCst)
        }
    }

    struct Worker(Probe);

    enum WorkerMsg {
        Panic,
        Fail,
        Stop,
    }

    impl Actor for Worker {
        type Msg = WorkerMsg;
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<Self::Msg>,
            _args: (),
        ) -> Result<(), ActorProcessingErr> {
            if self.0.refuse_start.load(Ordering::SeqCst) {
                return Err("worker refuses to start".into());
            }
            self.0.starts.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        async fn post_stop(
            &self,
            _myself: ActorRef<Self::Msg>,
            _state: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            self.0.stops.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        async fn handle(
            &self,
            myself: ActorRef<Self::Msg>,
            message: WorkerMsg,
            _state: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            match message {
                WorkerMsg::Panic => panic!("worker panicked on purpose"),
                WorkerMsg::Fail => return Err("worker failed on purpose".into()),
                WorkerMsg::Stop => myself.stop(None),
            }
            Ok(())
        }
    }

    /// Actor names are global to the process and tests run in parallel.
    fn unique(prefix: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::SeqCst))
    }

    fn worker(name: &str, restart: Restart, probe: &Probe) -> ChildSpec {
        let probe = probe.clone();
        ChildSpec::actor(name, restart, move || (Worker(probe.clone()), ()))
    }

    fn spec(strategy: Strategy, children: Vec<ChildSpec>) -> SupervisorSpec {
        SupervisorSpec {
            strategy,
            intensity: intensity(10, 60),
            backoff: Backoff::none(),
            children,
        }
    }

    fn tell(name: &str, message: WorkerMsg) {
        ActorRef::<WorkerMsg>::where_is(name)
            .expect("worker is registered")
            .send_message(message)
            .expect("worker accepts messages");
    }

    /// Polls (on tokio time, paused in these tests) until `condition` holds.
    async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        for _ in 0..5_000 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn inspect(supervisor: &ActorRef<SupervisorMsg>) -> SupervisorReport {
        ractor::call!(supervisor, SupervisorMsg::Inspect).expect("supervisor answers")
    }

    fn child<'a>(report: &'a SupervisorReport, name: &str) -> Option<&'a ChildReport> {
        report.children.iter().find(|child| child.name == name)
    }

    #[tokio::test(start_paused = true)]
    async fn one_for_one_restarts_only_the_panicking_child() {
        let (a, b) = (unique("o41-a"), unique("o41-b"));
        let (probe_a, probe_b) = (Probe::default(), Probe::default());
        let children = vec![
            worker(&a, Restart::Permanent, &probe_a),
            worker(&b, Restart::Permanent, &probe_b),
        ];
        let (sup, _) = spawn_supervisor(&unique("o41"), spec(Strategy::OneForOne, children), None)
            .await
            .unwrap();

        tell(&a, WorkerMsg::Panic);
        eventually("a restarted", || probe_a.starts() == 2).await;

        let report = inspect(&sup).await;
        assert_eq!(report.strategy, "one_for_one");
        assert_eq!(report.restarts_in_window, 1);
        let a_report = child(&report, &a).unwrap();
        assert!(a_report.running);
        assert_eq!(a_report.restarts, 1);
        assert!(a_report
            .last_failure
            .as_deref()
            .unwrap()
            .contains("panicked on purpose"));
        assert_eq!(child(&report, &b).unwrap().restarts, 0);
        assert_eq!(probe_b.starts(), 1);

        // An error returned by a handler is a failure too.
        tell(&a, WorkerMsg::Fail);
        eventually("a restarted again", || probe_a.starts() == 3).await;
        let report = inspect(&sup).await;
        assert!(child(&report, &a)
            .unwrap()
            .last_failure
            .as_deref()
            .unwrap()
            .contains("failed on purpose"));
        sup.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn temporary_child_is_never_restarted() {
        let name = unique("temp");
        let probe = Probe::default();
        let children = vec![worker(&name, Restart::Temporary, &probe)];
        let (sup, _) = spawn_supervisor(
            &unique("temp-sup"),
            spec(Strategy::OneForOne, children),
            None,
        )
        .await
        .unwrap();

        tell(&name, WorkerMsg::Panic);
        // Forgotten from the report means the decision has been made.
        let mut forgotten = false;
        for _ in 0..1_000 {
            if inspect(&sup).await.children.is_empty() {
                forgotten = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(forgotten, "temporary child still reported");
        assert_eq!(probe.starts(), 1);
        assert!(ractor::registry::where_is(name).is_none());
        sup.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_child_restarts_after_a_failure_but_not_a_normal_stop() {
        let (stops, fails) = (unique("tr-stop"), unique("tr-fail"));
        let (stop_probe, fail_probe) = (Probe::default(), Probe::default());
        let children = vec![
            worker(&stops, Restart::Transient, &stop_probe),
            worker(&fails, Restart::Transient, &fail_probe),
        ];
        let (sup, _) =
            spawn_supervisor(&unique("tr-sup"), spec(Strategy::OneForOne, children), None)
                .await
                .unwrap();

        tell(&fails, WorkerMsg::Panic);
        eventually("failed transient restarted", || fail_probe.starts() == 2).await;

        tell(&stops, WorkerMsg::Stop);
        eventually("stopped transient gone", || {
            ractor::registry::where_is(stops.clone()).is_none()
        })
        .await;
        let report = inspect(&sup).await;
        assert!(child(&report, &stops).is_none());
        assert_eq!(stop_probe.starts(), 1);
        assert_eq!(report.restarts_in_window, 1);
        sup.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_child_restarts_after_a_normal_stop() {
        let name = unique("perm");
        let probe = Probe::default();
        let children = vec![worker(&name, Restart::Permanent, &probe)];
        let (sup, _) = spawn_supervisor(
            &unique("perm-sup"),
            spec(Strategy::OneForOne, children),
            None,
        )
        .await
        .unwrap();

        tell(&name, WorkerMsg::Stop);
        eventually("permanent restarted", || probe.starts() == 2).await;
        let report = inspect(&sup).await;
        let reported = child(&report, &name).unwrap();
        assert_eq!(reported.restarts, 1);
        assert_eq!(reported.last_failure, None);
        sup.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn one_for_all_restarts_the_siblings_and_drops_temporary_ones() {
        let (a, b, temp) = (unique("o4a-a"), unique("o4a-b"), unique("o4a-t"));
        let (probe_a, probe_b, probe_t) = (Probe::default(), Probe::default(), Probe::default());
        let children = vec![
            worker(&a, Restart::Permanent, &probe_a),
            worker(&b, Restart::Transient, &probe_b),
            worker(&temp, Restart::Temporary, &probe_t),
        ];
        let (sup, _) = spawn_supervisor(&unique("o4a"), spec(Strategy::OneForAll, children), None)
            .await
            .unwrap();

        tell(&b, WorkerMsg::Panic);
        eventually("both restarted", || {
            probe_a.starts() == 2 && probe_b.starts() == 2
        })
        .await;

        let report = inspect(&sup).await;
        assert_eq!(report.strategy, "one_for_all");
        // The sibling was stopped gracefully before its restart.
        assert_eq!(probe_a.stops.load(Ordering::SeqCst), 1);
        assert!(child(&report, &temp).is_none());
        assert_eq!(probe_t.stops.load(Ordering::SeqCst), 1);
        assert!(ractor::registry::where_is(temp).is_none());
        assert_eq!(child(&report, &a).unwrap().restarts, 1);
        assert_eq!(child(&report, &b).unwrap().restarts, 1);
        assert!(child(&report, &a).unwrap().running && child(&report, &b).unwrap().running);
        // One restart of the group, not one per child.
        assert_eq!(report.restarts_in_window, 1);
        sup.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn exceeding_the_intensity_escalates_to_the_parent_which_restarts_the_subtree() {
        let (inner, leaf, bystander) = (unique("inner"), unique("leaf"), unique("bystander"));
        let (probe, bystander_probe) = (Probe::default(), Probe::default());
        let inner_spec = {
            let (leaf, probe) = (leaf.clone(), probe.clone());
            let (bystander, bystander_probe) = (bystander.clone(), bystander_probe.clone());
            move || SupervisorSpec {
                strategy: Strategy::OneForOne,
                intensity: intensity(1, 60),
                backoff: Backoff::none(),
                children: vec![
                    worker(&leaf, Restart::Permanent, &probe),
                    worker(&bystander, Restart::Permanent, &bystander_probe),
                ],
            }
        };
        let children = vec![ChildSpec::supervisor(
            &inner,
            Restart::Permanent,
            inner_spec,
        )];
        let (outer, _) =
            spawn_supervisor(&unique("outer"), spec(Strategy::OneForOne, children), None)
                .await
                .unwrap();

        tell(&leaf, WorkerMsg::Panic);
        eventually("leaf restarted by inner", || probe.starts() == 2).await;
        let first_inner = ractor::registry::where_is(inner.clone()).unwrap().get_id();

        // The second restart within the window is one too many for `inner`.
        tell(&leaf, WorkerMsg::Panic);
        eventually("leaf started by a new inner", || probe.starts() == 3).await;

        let outer_report = inspect(&outer).await;
        let inner_report = child(&outer_report, &inner).unwrap();
        assert_eq!(inner_report.restarts, 1);
        assert!(inner_report
            .last_failure
            .as_deref()
            .unwrap()
            .contains("more than 1 restarts"));
        let new_inner = ActorRef::<SupervisorMsg>::where_is(inner.clone()).unwrap();
        assert_ne!(new_inner.get_id(), first_inner);
        let fresh = inspect(&new_inner).await;
        assert_eq!(child(&fresh, &leaf).unwrap().restarts, 0);
        assert_eq!(fresh.restarts_in_window, 0);
        // The failed inner stopped its other child gracefully (not killed),
        // and the new inner started it again.
        assert_eq!(bystander_probe.stops.load(Ordering::SeqCst), 1);
        assert_eq!(bystander_probe.starts(), 2);
        outer.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn restart_waits_for_the_backoff_while_the_supervisor_keeps_answering() {
        let name = unique("slow");
        let probe = Probe::default();
        let delay = Duration::from_secs(10);
        let spec = SupervisorSpec {
            backoff: Backoff::sequence(vec![delay]),
            ..spec(
                Strategy::OneForOne,
                vec![worker(&name, Restart::Permanent, &probe)],
            )
        };
        let (sup, _) = spawn_supervisor(&unique("slow-sup"), spec, None)
            .await
            .unwrap();

        let failed_at = Instant::now();
        tell(&name, WorkerMsg::Panic);
        tokio::time::sleep_until(failed_at + delay - Duration::from_millis(5)).await;
        assert_eq!(probe.starts(), 1, "restarted before its backoff");
        let report = inspect(&sup).await;
        let waiting = child(&report, &name).unwrap();
        assert!(!waiting.running);
        let remaining = waiting.next_restart_in_ms.unwrap();
        assert!(
            (1..=5).contains(&remaining),
            "next restart in {remaining} ms"
        );

        eventually("restarted after the backoff", || probe.starts() == 2).await;
        assert!(Instant::now() >= failed_at + delay);
        assert_eq!(inspect(&sup).await.children[0].next_restart_in_ms, None);
        sup.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_with_consecutive_failures_and_resets_after_a_stable_run() {
        let name = unique("grow");
        let probe = Probe::default();
        let spec = SupervisorSpec {
            strategy: Strategy::OneForOne,
            intensity: intensity(10, 30),
            backoff: Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)),
            children: vec![worker(&name, Restart::Permanent, &probe)],
        };
        let (sup, _) = spawn_supervisor(&unique("grow-sup"), spec, None)
            .await
            .unwrap();

        async fn next_delay_ms(sup: &ActorRef<SupervisorMsg>) -> u64 {
            let mut delay = None;
            for _ in 0..1_000 {
                delay = inspect(sup).await.children[0].next_restart_in_ms;
                if delay.is_some() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            delay.expect("a restart is scheduled")
        }

        tell(&name, WorkerMsg::Panic);
        assert_eq!(next_delay_ms(&sup).await, 1_000);
        eventually("first restart", || probe.starts() == 2).await;

        tell(&name, WorkerMsg::Panic);
        assert_eq!(next_delay_ms(&sup).await, 2_000);
        eventually("second restart", || probe.starts() == 3).await;

        // Up for longer than the intensity window: the backoff starts over.
        tokio::time::sleep(Duration::from_secs(31)).await;
        tell(&name, WorkerMsg::Panic);
        assert_eq!(next_delay_ms(&sup).await, 1_000);
        sup.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_restart_attempts_are_retried_under_the_backoff() {
        let name = unique("refuse");
        let probe = Probe::default();
        let spec = SupervisorSpec {
            backoff: Backoff::sequence(vec![Duration::from_secs(1)]),
            ..spec(
                Strategy::OneForOne,
                vec![worker(&name, Restart::Permanent, &probe)],
            )
        };
        let (sup, _) = spawn_supervisor(&unique("refuse-sup"), spec, None)
            .await
            .unwrap();

        probe.refuse_start.store(true, Ordering::SeqCst);
        tell(&name, WorkerMsg::Panic);
        let mut report = inspect(&sup).await;
        for _ in 0..5_000 {
            if report.restarts_in_window >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            report = inspect(&sup).await;
        }
        let waiting = child(&report, &name).unwrap();
        assert!(!waiting.running);
        assert!(waiting
            .last_failure
            .as_deref()
            .unwrap()
            .contains("refuses to start"));
        assert!(waiting.next_restart_in_ms.is_some());

        probe.refuse_start.store(false, Ordering::SeqCst);
        eventually("restart succeeds once allowed", || probe.starts() == 2).await;
        let report = inspect(&sup).await;
        assert!(child(&report, &name).unwrap().running);
        assert_eq!(child(&report, &name).unwrap().restarts, 1);
        sup.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_restart_attempts_count_towards_the_intensity() {
        let name = unique("doomed");
        let probe = Probe::default();
        let spec = SupervisorSpec {
            intensity: intensity(3, 60),
            // A real delay lets paused time advance, so a missing intensity
            // check fails on the timeout below instead of spinning forever.
            backoff: Backoff::sequence(vec![Duration::from_millis(1)]),
            ..spec(
                Strategy::OneForOne,
                vec![worker(&name, Restart::Permanent, &probe)],
            )
        };
        let (sup, join) = spawn_supervisor(&unique("doomed-sup"), spec, None)
            .await
            .unwrap();

        probe.refuse_start.store(true, Ordering::SeqCst);
        tell(&name, WorkerMsg::Panic);
        tokio::time::timeout(Duration::from_secs(5), join)
            .await
            .expect("supervisor gave up")
            .unwrap();
        assert_eq!(sup.get_status(), ractor::ActorStatus::Stopped);
        assert_eq!(probe.starts(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn children_can_be_added_and_removed_at_runtime() {
        let (dynamic, broken) = (unique("dyn"), unique("dyn-broken"));
        let (probe, broken_probe) = (Probe::default(), Probe::default());
        broken_probe.refuse_start.store(true, Ordering::SeqCst);
        let (sup, _) =
            spawn_supervisor(&unique("dyn-sup"), spec(Strategy::OneForOne, vec![]), None)
                .await
                .unwrap();

        let added = ractor::call!(sup, |reply| SupervisorMsg::StartChild(
            worker(&dynamic, Restart::Permanent, &probe),
            Some(reply)
        ))
        .unwrap();
        assert_eq!(added, Ok(()));
        assert_eq!(probe.starts(), 1);

        let duplicate = ractor::call!(sup, |reply| SupervisorMsg::StartChild(
            worker(&dynamic, Restart::Permanent, &probe),
            Some(reply)
        ))
        .unwrap();
        assert!(duplicate.unwrap_err().contains("already supervised"));
        assert_eq!(probe.starts(), 1);

        let refused = ractor::call!(sup, |reply| SupervisorMsg::StartChild(
            worker(&broken, Restart::Permanent, &broken_probe),
            Some(reply)
        ))
        .unwrap();
        assert!(refused.unwrap_err().contains(&broken));
        let report = inspect(&sup).await;
        assert_eq!(report.children.len(), 1);
        assert!(child(&report, &dynamic).unwrap().running);

        // A dynamic child is supervised like any other.
        tell(&dynamic, WorkerMsg::Panic);
        eventually("dynamic child restarted", || probe.starts() == 2).await;

        sup.send_message(SupervisorMsg::StopChild(dynamic.clone()))
            .unwrap();
        let report = inspect(&sup).await;
        assert!(report.children.is_empty());
        assert!(ractor::registry::where_is(dynamic.clone()).is_none());
        // Stopped gracefully (the panicked life never ran its post_stop).
        assert_eq!(probe.stops.load(Ordering::SeqCst), 1);
        // Stopped for good, even though it is Permanent.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(probe.starts(), 2);
        sup.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_that_cannot_start_fails_the_supervisor_start() {
        let (good, bad) = (unique("good"), unique("bad"));
        let (good_probe, bad_probe) = (Probe::default(), Probe::default());
        bad_probe.refuse_start.store(true, Ordering::SeqCst);
        let children = vec![
            worker(&good, Restart::Permanent, &good_probe),
            worker(&bad, Restart::Permanent, &bad_probe),
        ];
        let name = unique("nostart");
        let err = spawn_supervisor(&name, spec(Strategy::OneForOne, children), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&bad), "{err}");
        // The child started before it is stopped, freeing its name.
        assert!(ractor::registry::where_is(good).is_none());
        assert_eq!(good_probe.stops.load(Ordering::SeqCst), 1);
        assert!(ractor::registry::where_is(name).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn exits_of_actors_it_does_not_supervise_are_ignored() {
        let name = unique("known");
        let probe = Probe::default();
        let children = vec![worker(&name, Restart::Permanent, &probe)];
        let (sup, _) = spawn_supervisor(
            &unique("stray-sup"),
            spec(Strategy::OneForOne, children),
            None,
        )
        .await
        .unwrap();

        // Linked to the supervisor by someone else, not in its spec.
        let stray_probe = Probe::default();
        let (stray, _) = Actor::spawn_linked(None, Worker(stray_probe.clone()), (), sup.get_cell())
            .await
            .unwrap();
        stray.send_message(WorkerMsg::Panic).unwrap();
        stray.wait(Some(Duration::from_secs(5))).await.unwrap();

        let report = inspect(&sup).await;
        assert_eq!(report.children.len(), 1);
        assert_eq!(report.restarts_in_window, 0);
        assert_eq!(stray_probe.starts(), 1);
        assert_eq!(probe.starts(), 1);
        sup.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn registers_with_the_dump_and_stops_children_gracefully() {
        let name = unique("dumped");
        let probe = Probe::default();
        let children = vec![worker(&name, Restart::Permanent, &probe)];
        let (sup, _) = spawn_supervisor(
            &unique("dump-sup"),
            spec(Strategy::OneForOne, children),
            None,
        )
        .await
        .unwrap();

        let node = crate::dump::snapshot(sup.get_cell()).await;
        assert_eq!(node.kind, "supervisor");
        let state = node.state.expect("supervisor reports its state");
        assert_eq!(state["strategy"], "one_for_one");
        assert_eq!(state["children"][0]["name"], name.as_str());
        assert_eq!(state["children"][0]["running"], true);
        assert_eq!(node.children.len(), 1);
        assert_eq!(node.children[0].name, name);

        sup.stop_and_wait(None, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(probe.stops.load(Ordering::SeqCst), 1);
        assert_eq!(crate::dump::snapshot(sup.get_cell()).await.kind, "actor");
    }
}
