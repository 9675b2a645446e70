//! The live actor tree, as JSON: what SIGUSR1 and `talon dump` write to
//! `data/state-dump.json` and the log.
//!
//! Every actor that has state worth showing registers an *inspector* when it
//! starts: a closure that asks the actor (through its own typed message) for
//! a JSON snapshot. The dump walks ractor's parent/child links from the root
//! and asks each actor's inspector, with a short timeout so a busy actor can
//! never wedge the dump.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{ActorCell, ActorId};
use serde::Serialize;
use serde_json::Value;

/// Asks one actor for its state.
pub type Inspector = Arc<dyn Fn() -> BoxFuture<'static, Option<Value>> + Send + Sync>;

struct Entry {
    kind: &'static str,
    inspector: Option<Inspector>,
}

fn registry() -> &'static Mutex<HashMap<ActorId, Entry>> {
    static REGISTRY: OnceLock<Mutex<HashMap<ActorId, Entry>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Called by an actor in `pre_start`: its kind and, optionally, how to ask it
/// for its state.
pub fn register(cell: &ActorCell, kind: &'static str, inspector: Option<Inspector>) {
    if let Ok(mut map) = registry().lock() {
        map.insert(cell.get_id(), Entry { kind, inspector });
    }
}

/// Registers an actor whose message type has an `Inspect(reply)` variant:
/// `inspect` builds that message. Called from `pre_start`.
pub fn register_inspectable<M>(
    actor: &ractor::ActorRef<M>,
    kind: &'static str,
    inspect: fn(ractor::RpcReplyPort<Value>) -> M,
) where
    M: ractor::Message,
{
    let actor = actor.clone();
    let cell = actor.get_cell();
    register(
        &cell,
        kind,
        Some(Arc::new(move || {
            let actor = actor.clone();
            Box::pin(async move {
                match actor.call(inspect, None).await {
                    Ok(ractor::rpc::CallResult::Success(state)) => Some(state),
                    _ => None,
                }
            })
        })),
    );
}

/// Called by an actor in `post_stop`.
pub fn unregister(cell: &ActorCell) {
    if let Ok(mut map) = registry().lock() {
        map.remove(&cell.get_id());
    }
}

/// One node of the dumped tree.
#[derive(Debug, Clone, Serialize)]
pub struct ActorNode {
    pub name: String,
    pub id: String,
    pub kind: String,
    pub status: String,
    /// The actor's own state, as it reported it (never secrets).
    pub state: Option<Value>,
    pub children: Vec<ActorNode>,
}

/// How long one actor may take to answer before it is reported as busy.
const INSPECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Walks the tree under `root`.
pub fn snapshot(root: ActorCell) -> BoxFuture<'static, ActorNode> {
    Box::pin(async move {
        let (kind, inspector) = match registry().lock() {
            Ok(map) => map
                .get(&root.get_id())
                .map(|e| (e.kind, e.inspector.clone()))
                .unwrap_or(("actor", None)),
            Err(_) => ("actor", None),
        };
        let state = match inspector {
            Some(inspect) => match tokio::time::timeout(INSPECT_TIMEOUT, inspect()).await {
                Ok(state) => state,
                Err(_) => Some(serde_json::json!({ "busy": "did not answer within 500 ms" })),
            },
            None => None,
        };
        let mut children = Vec::new();
        let mut cells = root.get_children();
        cells.sort_by_key(|c| c.get_name().unwrap_or_default());
        for child in cells {
            children.push(snapshot(child).await);
        }
        ActorNode {
            name: root.get_name().unwrap_or_else(|| root.get_id().to_string()),
            id: root.get_id().to_string(),
            kind: kind.to_string(),
            status: format!("{:?}", root.get_status()),
            state,
            children,
        }
    })
}
