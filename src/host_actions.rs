//! What the agent may ask the host to do (SPEC §6): send a message, manage
//! its tasks, register a group, fetch a web page. Authorisation comes from
//! the asking container's own identity ([`Caller`]), never from the request.

use crate::messages::wire::{HostAction, HostResult};

/// Who is asking: fixed by the container actor when it starts the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub group_folder: String,
    pub chat_id: String,
    pub is_main: bool,
}

/// Performs host actions for agents.
pub struct HostActions {}

impl HostActions {
    pub async fn perform(&self, caller: &Caller, action: HostAction) -> HostResult {
        tracing::warn!(group = %caller.group_folder, ?action, "host actions are being built");
        HostResult::Error {
            message: "this host does not perform actions yet".into(),
        }
    }
}
