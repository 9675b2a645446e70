//! The terminal channel: a local chat with the assistant through the whole
//! pipeline, with no platform tokens.
//!
//! Two halves. The *input* task ([`spawn_input`]) turns lines into inbound
//! messages for the router; it lives outside the actor so a restart of the
//! actor never loses the reader's place in stdin. The *actor* delivers
//! replies (printing them and marking them sent) and reports when a message
//! has been dealt with. When stdin is not a terminal the input runs
//! lock-step: one message in flight at a time, and it finishes once stdin has
//! closed and the last message has been answered. Messages of the chat that
//! a killed run accepted but never answered count as in flight from the
//! start (see [`TerminalArgs::recovered_through`]).

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::channels::submit_to_router;
use crate::messages::channel::ChannelMsg;
use crate::messages::InboundMessage;
use crate::store::Store;

/// The terminal's chat id: the local main group.
pub const TERMINAL_CHAT: &str = "term:local";

/// What the terminal prints.
#[derive(Debug, Clone, PartialEq)]
pub enum TerminalOutput {
    Reply(String),
    Notice(String),
}

#[derive(Clone)]
pub struct TerminalArgs {
    pub store: Store,
    pub chat_id: String,
    pub output: mpsc::UnboundedSender<TerminalOutput>,
    /// One permit per message that may be in flight (lock-step mode).
    pub gate: Arc<Semaphore>,
    /// The last unanswered message recovered at start, when the caller
    /// took the gate's permit for them: it comes back only once the agent
    /// has settled the chat through this message.
    pub recovered_through: Option<i64>,
}

pub struct TerminalChannel;

pub struct TerminalState {
    args: TerminalArgs,
    delivered: u64,
    /// Recovered messages not all settled yet (from the arguments).
    recovering: Option<i64>,
}

impl Actor for TerminalChannel {
    type Msg = ChannelMsg;
    type State = TerminalState;
    type Arguments = TerminalArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: TerminalArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        crate::dump::register_inspectable(&myself, "channel", ChannelMsg::Inspect);
        Ok(TerminalState {
            recovering: args.recovered_through,
            args,
            delivered: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ChannelMsg::Deliver(row) => {
                let text = row.text.clone();
                let line = match row.kind {
                    crate::store::OutboxKind::Reply => TerminalOutput::Reply(text),
                    crate::store::OutboxKind::Notice => TerminalOutput::Notice(text),
                };
                if state.args.output.send(line).is_ok() {
                    state.args.store.mark_sent(row.id)?;
                    state.delivered += 1;
                }
            }
            ChannelMsg::Settled {
                chat_id,
                through_seq,
            } => {
                // Recovered messages may take several batches: the gate
                // stays shut until the last of them is settled.
                let recovered_pending = state.recovering.is_some_and(|last| through_seq < last);
                // Never more than one message in flight, even if an old batch
                // (recovered at startup) settles too.
                if chat_id == state.args.chat_id && !recovered_pending {
                    state.recovering = None;
                    if state.args.gate.available_permits() == 0 {
                        state.args.gate.add_permits(1);
                    }
                }
            }
            ChannelMsg::Working { .. } | ChannelMsg::Connection(_) => {}
            ChannelMsg::Inspect(reply) => {
                let _ = reply.send(json!({
                    "channel": "terminal",
                    "chat": state.args.chat_id,
                    "delivered": state.delivered,
                    "waiting_for_answer": state.args.gate.available_permits() == 0,
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

/// Feeds lines to the router as messages from `sender`. In lock-step mode
/// each line waits for the previous one to be settled. `finished` fires once
/// the input has ended and (lock-step) the last message has been answered;
/// with `recovering` (the gate is held by messages recovered at start) that
/// includes them, even when no line comes.
pub fn spawn_input(
    mut lines: mpsc::Receiver<String>,
    chat_id: String,
    sender: String,
    gate: Arc<Semaphore>,
    lock_step: bool,
    recovering: bool,
    finished: oneshot::Sender<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let mut count: u64 = 0;
        while let Some(line) = lines.recv().await {
            let content = line.trim_end_matches(['\r', '\n']).to_string();
            if content.trim().is_empty() {
                continue;
            }
            if lock_step {
                match gate.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => break,
                }
            }
            count += 1;
            let message = InboundMessage {
                chat_id: chat_id.clone(),
                platform_msg_id: format!("{run_id}-{count}"),
                sender_id: sender.clone(),
                sender_name: sender.clone(),
                content,
                timestamp: crate::store::now_millis(),
                is_from_me: false,
                is_bot_message: false,
                reply_to: None,
                thread_id: None,
            };
            submit_to_router(message).await;
        }
        if lock_step && (count > 0 || recovering) {
            // The last message is answered when its permit comes back.
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
        }
        let _ = finished.send(());
    })
}
