//! The router: every inbound message passes through here.
//!
//! It stores the message (a platform's redelivery is recognised by its
//! platform id and ignored), rewrites nothing it does not own, and, when the
//! chat is a registered group and the message should wake the agent (SPEC
//! §3), wakes that group's queue. Messages that wake nothing are kept as
//! context for the group's next batch; unregistered chats are only stored.

use std::collections::HashMap;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;

use crate::actors::group_queue::{queue_name, GroupQueueMsg};
use crate::messages::{InboundMessage, RegisteredGroup};
use crate::store::Store;
use crate::trigger::{wakes_agent, Trigger};

/// The router's registry name.
pub const ROUTER: &str = "router";

pub enum RouterMsg {
    Inbound(InboundMessage),
    /// Groups changed in the store: reload them.
    ReloadGroups,
    Inspect(RpcReplyPort<serde_json::Value>),
}

pub struct RouterArgs {
    pub store: Store,
    /// The default trigger regex, derived from the assistant's name.
    pub default_trigger: String,
}

struct RoutedGroup {
    group: RegisteredGroup,
    trigger: Trigger,
}

pub struct RouterState {
    store: Store,
    default_trigger: String,
    groups: HashMap<String, RoutedGroup>,
    stored: u64,
    duplicates: u64,
    woke: u64,
}

/// What happened to one inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    Duplicate,
    StoredOnly,
    WokeGroup(String),
}

pub struct Router;

impl Router {
    fn load_groups(state: &mut RouterState) -> Result<(), ActorProcessingErr> {
        let mut groups = HashMap::new();
        for group in state.store.groups()? {
            let pattern = group
                .trigger_pattern
                .clone()
                .unwrap_or_else(|| state.default_trigger.clone());
            let trigger = match Trigger::new(&pattern) {
                Ok(trigger) => trigger,
                Err(e) => {
                    tracing::error!(group = %group.folder, %pattern, error = %e,
                        "invalid trigger pattern; the default is used");
                    Trigger::new(&state.default_trigger)?
                }
            };
            groups.insert(group.chat_id.clone(), RoutedGroup { group, trigger });
        }
        state.groups = groups;
        Ok(())
    }

    fn route(
        state: &mut RouterState,
        message: InboundMessage,
    ) -> Result<Routed, ActorProcessingErr> {
        if state.store.insert_message(&message)?.is_none() {
            state.duplicates += 1;
            return Ok(Routed::Duplicate);
        }
        state.stored += 1;
        let Some(routed) = state.groups.get(&message.chat_id) else {
            return Ok(Routed::StoredOnly);
        };
        let group = &routed.group;
        if message.is_from_me
            || message.is_bot_message
            || !wakes_agent(
                group.is_main,
                group.requires_trigger,
                &routed.trigger,
                &message.content,
            )
        {
            return Ok(Routed::StoredOnly);
        }
        let name = queue_name(&group.folder);
        match ractor::registry::where_is(name.clone()) {
            Some(queue) => {
                if queue.send_message(GroupQueueMsg::Wake).is_err() {
                    // The queue is restarting; it re-reads the store on start.
                    tracing::warn!(queue = %name, "queue not accepting; it will recover from the store");
                }
            }
            None => {
                tracing::warn!(queue = %name, "queue not running; it will recover from the store")
            }
        }
        state.woke += 1;
        Ok(Routed::WokeGroup(group.folder.clone()))
    }
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RouterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        crate::dump::register_inspectable(&myself, "router", RouterMsg::Inspect);
        let mut state = RouterState {
            store: args.store,
            default_trigger: args.default_trigger,
            groups: HashMap::new(),
            stored: 0,
            duplicates: 0,
            woke: 0,
        };
        Self::load_groups(&mut state)?;
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RouterMsg::Inbound(message) => {
                let chat = message.chat_id.clone();
                let routed = Self::route(state, message)?;
                tracing::debug!(%chat, ?routed, "inbound message routed");
            }
            RouterMsg::ReloadGroups => Self::load_groups(state)?,
            RouterMsg::Inspect(reply) => {
                let _ = reply.send(json!({
                    "groups": state.groups.len(),
                    "stored": state.stored,
                    "duplicates_ignored": state.duplicates,
                    "batches_woken": state.woke,
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
