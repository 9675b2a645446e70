//! The platform channel actor: one per chat platform (Slack, Discord), the
//! same actor for each, driving a [`Platform`].
//!
//! At start it counts itself in the crash ledger, then its connection task
//! waits out the persisted crash-loop delay before connecting (so even a
//! host restarted by systemd in a loop cannot hammer the platform), while
//! delivery works at once: replies go out over the platform's Web API
//! through per-chat [`Lanes`]. The connection task reports back as
//! [`ConnectionEvent`]s: a lost connection fails the actor (its supervisor
//! restarts it), a refused token stops it for good with one clear error, and
//! an hour without a crash resets the count. Replies left unsent by an
//! earlier run are delivered when it starts.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use tokio::sync::watch;

use crate::channels::crash_backoff::{CrashLedger, CrashRecord};
use crate::channels::delivery::{platform_chat, DeliveryPolicy, Lanes, OnFatal};
use crate::channels::{until_stopped, Platform, Reporter};
use crate::messages::channel::{ChannelMsg, ConnectionEvent};
use crate::messages::channel_of;
use crate::store::Store;

/// The longest a typing indicator is kept up for one batch.
const MAX_TYPING: Duration = Duration::from_secs(600);

pub struct PlatformArgs<P: Platform> {
    pub platform: Arc<P>,
    pub store: Store,
    pub ledger: CrashLedger,
    pub delivery: DeliveryPolicy,
    /// Running this long without a crash resets the crash count.
    pub stable_after: Duration,
}

impl<P: Platform> Clone for PlatformArgs<P> {
    fn clone(&self) -> Self {
        PlatformArgs {
            platform: self.platform.clone(),
            store: self.store.clone(),
            ledger: self.ledger.clone(),
            delivery: self.delivery,
            stable_after: self.stable_after,
        }
    }
}

pub struct PlatformChannel<P>(PhantomData<fn() -> P>);

impl<P> Default for PlatformChannel<P> {
    fn default() -> Self {
        PlatformChannel(PhantomData)
    }
}

/// Where the platform connection stands, for the state dump.
#[derive(Debug, Clone)]
enum Link {
    /// Waiting out the crash-loop delay, then connecting.
    Connecting {
        delay: Duration,
    },
    Up {
        since: chrono::DateTime<chrono::Utc>,
    },
    Refused {
        reason: String,
    },
}

pub struct PlatformState<P: Platform> {
    args: PlatformArgs<P>,
    lanes: Lanes<P::Poster>,
    link: Link,
    crashes_before: u32,
    reconnects: u64,
    stop: watch::Sender<bool>,
    connection: Option<tokio::task::JoinHandle<()>>,
    typing: HashMap<String, tokio::task::AbortHandle>,
}

impl<P: Platform> Actor for PlatformChannel<P> {
    type Msg = ChannelMsg;
    type State = PlatformState<P>;
    type Arguments = PlatformArgs<P>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PlatformArgs<P>,
    ) -> Result<Self::State, ActorProcessingErr> {
        crate::dump::register_inspectable(&myself, "channel", ChannelMsg::Inspect);
        let name = args.platform.name();
        let (before, delay) = args.ledger.begin_start(name);
        if before.unclean_runs > 0 {
            tracing::warn!(
                channel = name,
                crashes = before.unclean_runs,
                ?delay,
                "channel restarting after a crash; connecting after the crash-loop delay"
            );
        }
        let reporter = Reporter::new(myself.clone());
        let fatal_reporter = reporter.clone();
        let on_fatal: OnFatal =
            Arc::new(move |reason| fatal_reporter.report(ConnectionEvent::Rejected(reason)));
        let mut lanes = Lanes::new(
            args.platform.poster(),
            args.store.clone(),
            args.delivery,
            on_fatal,
        );
        // Replies an earlier run left unsent go out first, in order.
        for row in args.store.unsent_outbox()? {
            if channel_of(&row.chat_id) == args.platform.prefix() {
                lanes.deliver(row);
            }
        }
        let (stop, stopped) = watch::channel(false);
        let platform = args.platform.clone();
        let connection = tokio::spawn(async move {
            let mut stopped = stopped;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = until_stopped(&mut stopped) => return,
            }
            platform.serve(reporter, stopped).await;
        });
        myself.send_after(args.stable_after, || {
            ChannelMsg::Connection(ConnectionEvent::Stable)
        });
        Ok(PlatformState {
            args,
            lanes,
            link: Link::Connecting { delay },
            crashes_before: before.unclean_runs,
            reconnects: 0,
            stop,
            connection: Some(connection),
            typing: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let name = state.args.platform.name();
        match message {
            ChannelMsg::Deliver(row) => state.lanes.deliver(row),
            ChannelMsg::Working { chat_id } => Self::start_typing(state, chat_id),
            ChannelMsg::Settled { chat_id, .. } => {
                if let Some(typing) = state.typing.remove(&chat_id) {
                    typing.abort();
                }
            }
            ChannelMsg::Connection(event) => match event {
                ConnectionEvent::Up => {
                    if matches!(state.link, Link::Up { .. }) {
                        state.reconnects += 1;
                    }
                    tracing::info!(channel = name, "connected");
                    state.link = Link::Up {
                        since: chrono::Utc::now(),
                    };
                }
                ConnectionEvent::Stable => {
                    state.args.ledger.set(name, CrashRecord::stable());
                }
                ConnectionEvent::Lost(reason) => {
                    tracing::error!(channel = name, %reason, "connection lost; the channel restarts");
                    return Err(format!("{name}: connection lost: {reason}").into());
                }
                ConnectionEvent::Rejected(reason) => {
                    if matches!(state.link, Link::Refused { .. }) {
                        return Ok(());
                    }
                    tracing::error!(channel = name, %reason,
                        "{name} refused the token: the {name} channel is stopped (no restarts) until the token is fixed and talon restarted; other channels keep serving");
                    // Not a crash: the next start (with a fixed token) goes at once.
                    state.args.ledger.set(name, CrashRecord::reset());
                    state.link = Link::Refused { reason };
                    myself.stop(Some(format!("{name}: token refused")));
                }
            },
            ChannelMsg::Inspect(reply) => {
                let link = match &state.link {
                    Link::Connecting { delay } => {
                        json!({"state": "connecting", "crash_delay_secs": delay.as_secs()})
                    }
                    Link::Up { since } => json!({"state": "up", "since": since.to_rfc3339()}),
                    Link::Refused { reason } => json!({"state": "refused", "reason": reason}),
                };
                let _ = reply.send(json!({
                    "channel": name,
                    "connection": link,
                    "crashes_before_this_run": state.crashes_before,
                    "reconnects": state.reconnects,
                    "typing_in": state.typing.len(),
                    "delivery": state.lanes.stats(),
                }));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        crate::dump::unregister(&myself.get_cell());
        for (_, typing) in state.typing.drain() {
            typing.abort();
        }
        // Let the platform library close its connection properly.
        let _ = state.stop.send(true);
        if let Some(mut connection) = state.connection.take() {
            if tokio::time::timeout(Duration::from_secs(5), &mut connection)
                .await
                .is_err()
            {
                connection.abort();
            }
        }
        Ok(())
    }
}

impl<P: Platform> PlatformChannel<P> {
    /// Keeps "typing…" shown in `chat_id` until its batch settles (or for
    /// [`MAX_TYPING`] at most).
    fn start_typing(state: &mut PlatformState<P>, chat_id: String) {
        let Some(refresh) = state.args.platform.typing_refresh() else {
            return;
        };
        if state.typing.get(&chat_id).is_some_and(|t| !t.is_finished()) {
            return;
        }
        let platform = state.args.platform.clone();
        let chat = platform_chat(&chat_id).to_string();
        let task = tokio::spawn(async move {
            let until = tokio::time::Instant::now() + MAX_TYPING;
            while tokio::time::Instant::now() < until {
                if let Err(failure) = platform.typing(&chat).await {
                    tracing::debug!(%chat, detail = %failure.detail, "typing indicator failed");
                }
                tokio::time::sleep(refresh).await;
            }
        });
        state.typing.insert(chat_id, task.abort_handle());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::supervisor::{
        spawn_supervisor, Backoff, ChildSpec, Intensity, Restart, Strategy, SupervisorSpec,
    };
    use crate::channels::delivery::{Poster, SendFailure};
    use crate::channels::split::{Limit, SLACK_LIMIT};
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// A platform whose connection comes up, then either holds until
    /// stopped or (with `crash`) is lost at once; it records when it
    /// connected.
    struct Flaky {
        prefix: &'static str,
        crash: bool,
        connects: Arc<Mutex<Vec<Instant>>>,
    }

    struct Nowhere;

    impl Poster for Nowhere {
        fn limit(&self) -> Limit {
            SLACK_LIMIT
        }

        async fn post(&self, _: &str, _: Option<&str>, _: &str) -> Result<(), SendFailure> {
            Ok(())
        }
    }

    impl Platform for Flaky {
        type Poster = Nowhere;

        fn name(&self) -> &'static str {
            self.prefix
        }

        fn prefix(&self) -> &'static str {
            self.prefix
        }

        fn poster(&self) -> Arc<Nowhere> {
            Arc::new(Nowhere)
        }

        async fn serve(&self, report: Reporter, mut stop: watch::Receiver<bool>) {
            self.connects.lock().unwrap().push(Instant::now());
            report.report(ConnectionEvent::Up);
            if self.crash {
                report.report(ConnectionEvent::Lost("connection reset".into()));
            }
            until_stopped(&mut stop).await;
        }
    }

    fn args(
        prefix: &'static str,
        crash: bool,
        ledger: CrashLedger,
    ) -> (PlatformArgs<Flaky>, Arc<Mutex<Vec<Instant>>>) {
        let connects = Arc::new(Mutex::new(Vec::new()));
        let platform = Flaky {
            prefix,
            crash,
            connects: connects.clone(),
        };
        let args = PlatformArgs {
            platform: Arc::new(platform),
            store: Store::open_in_memory().unwrap(),
            ledger,
            delivery: DeliveryPolicy::default(),
            stable_after: Duration::from_secs(3600),
        };
        (args, connects)
    }

    fn offsets(start: Instant, connects: &Mutex<Vec<Instant>>) -> Vec<u64> {
        connects
            .lock()
            .unwrap()
            .iter()
            .map(|at| (*at - start).as_secs())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_loop_reconnects_after_0_0_10_30_120_300_900_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = CrashLedger::in_data_dir(dir.path());
        let (args, connects) = args("test-loop", true, ledger.clone());
        let spec = SupervisorSpec {
            strategy: Strategy::OneForOne,
            intensity: Intensity {
                max_restarts: 100,
                within: Duration::from_secs(3600),
            },
            backoff: Backoff::none(),
            children: vec![ChildSpec::actor(
                "channel:test-loop",
                Restart::Transient,
                move || (PlatformChannel::<Flaky>::default(), args.clone()),
            )],
        };
        let start = Instant::now();
        let (supervisor, _handle) = spawn_supervisor("test-loop-sup", spec, None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2500)).await;
        // Connected at once, then after each crash 0, 0, 10, 30, 120, 300,
        // 900 s later (cumulative below).
        let at = offsets(start, &connects);
        assert_eq!(at, [0, 0, 0, 10, 40, 160, 460, 1360, 2260]);
        // Every start is counted before it connects; the tenth is waiting.
        assert_eq!(ledger.get("test-loop").unclean_runs, 10);
        supervisor.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_is_persisted_and_an_hour_of_stable_running_resets_it() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = CrashLedger::in_data_dir(dir.path());
        // A previous host crashed this adapter four times in a row.
        ledger.set("test-stable", CrashRecord { unclean_runs: 4 });
        let (args, connects) = args("test-stable", false, ledger.clone());
        let start = Instant::now();
        let (actor, handle) = Actor::spawn(
            Some("channel:test-stable".into()),
            PlatformChannel::<Flaky>::default(),
            args,
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(connects.lock().unwrap().is_empty(), "waits out 30 s first");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(offsets(start, &connects), vec![30]);
        assert_eq!(ledger.get("test-stable").unclean_runs, 5);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(ledger.get("test-stable"), CrashRecord::stable());
        actor.stop(None);
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_stops_the_adapter_without_counting_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = CrashLedger::in_data_dir(dir.path());
        let (args, _connects) = args("test-refused", false, ledger.clone());
        let (actor, handle) = Actor::spawn(
            Some("channel:test-refused".into()),
            PlatformChannel::<Flaky>::default(),
            args,
        )
        .await
        .unwrap();
        actor
            .cast(ChannelMsg::Connection(ConnectionEvent::Rejected(
                "invalid_auth".into(),
            )))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("the adapter stops")
            .unwrap();
        assert_eq!(ledger.get("test-refused"), CrashRecord::reset());
    }
}
