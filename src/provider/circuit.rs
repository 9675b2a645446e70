//! One circuit per provider: an outage is noticed once, waited out, and
//! ended by a probe, instead of every batch spending its retries against it.
//!
//! A provider trips its circuit when a call cannot reach the provider at all
//! (connection refused, no route, DNS, connect timeout) after its own short
//! retries. While the circuit is open every call fails at once with
//! [`ErrorKind::Unavailable`] (no request goes out), the group queues that
//! meet it pause without counting a retry and tell their chats once, and a
//! probe task asks the provider whether it is back every `probe_interval`.
//! The first probe that gets any HTTP answer closes the circuit, and every
//! paused queue, waiting on [`Circuit::wait_closed`], resumes by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::{ErrorKind, ModelFailure};

/// Asks the provider whether it answers at all; `true` when it does.
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

#[derive(Debug, Clone, PartialEq)]
pub enum CircuitState {
    Closed,
    /// Unreachable since `since`, for `reason` (one line, no secret).
    Open {
        since: Instant,
        reason: String,
    },
}

/// A provider's circuit. Shared (`Arc`) by every copy of the provider.
pub struct Circuit {
    name: String,
    state: watch::Sender<CircuitState>,
    probe_interval: Duration,
}

impl std::fmt::Debug for Circuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Circuit")
            .field("name", &self.name)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Circuit {
    pub fn new(name: impl Into<String>, probe_interval: Duration) -> Arc<Circuit> {
        let (state, _) = watch::channel(CircuitState::Closed);
        Arc::new(Circuit {
            name: name.into(),
            state,
            probe_interval,
        })
    }

    pub fn state(&self) -> CircuitState {
        self.state.borrow().clone()
    }

    /// The failure every call gets while the circuit is open.
    pub fn refusal(&self) -> Option<ModelFailure> {
        match &*self.state.borrow() {
            CircuitState::Closed => None,
            CircuitState::Open { since, reason } => Some(ModelFailure {
                kind: ErrorKind::Unavailable,
                message: format!(
                    "{reason} (unreachable for {}s; talon keeps trying)",
                    since.elapsed().as_secs()
                ),
            }),
        }
    }

    /// Opens the circuit (if it is not open yet) and starts probing with
    /// `probe`; the probe task ends when the provider answers.
    pub fn trip(self: &Arc<Self>, reason: String, probe: Probe) {
        let opened = self.state.send_if_modified(|state| match state {
            CircuitState::Closed => {
                *state = CircuitState::Open {
                    since: Instant::now(),
                    reason: reason.clone(),
                };
                true
            }
            CircuitState::Open { .. } => false,
        });
        if !opened {
            return;
        }
        tracing::warn!(provider = %self.name, %reason, "model provider unreachable: queues pause until it answers again");
        let circuit = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(circuit.probe_interval).await;
                if probe().await {
                    circuit.close();
                    return;
                }
                tracing::debug!(provider = %circuit.name, "probe: still unreachable");
            }
        });
    }

    /// Closes the circuit: the provider answers again.
    pub fn close(&self) {
        let closed = self.state.send_if_modified(|state| match state {
            CircuitState::Open { .. } => {
                *state = CircuitState::Closed;
                true
            }
            CircuitState::Closed => false,
        });
        if closed {
            tracing::info!(provider = %self.name, "model provider reachable again; paused queues resume");
        }
    }

    /// Resolves once the circuit is closed (at once if it is).
    pub fn wait_closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut state = self.state.subscribe();
        async move {
            let _ = state.wait_for(|s| matches!(s, CircuitState::Closed)).await;
        }
    }

    /// For the dump: `closed`, or how long it has been open and why.
    pub fn describe(&self) -> serde_json::Value {
        match &*self.state.borrow() {
            CircuitState::Closed => serde_json::json!({"circuit": "closed"}),
            CircuitState::Open { since, reason } => serde_json::json!({
                "circuit": "open",
                "open_for_s": since.elapsed().as_secs(),
                "reason": reason,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn probe_answering_after(attempts: usize, calls: Arc<AtomicUsize>) -> Probe {
        Arc::new(move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move { n >= attempts })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_tripped_circuit_refuses_until_a_probe_answers_then_waiters_resume() {
        let circuit = Circuit::new("anthropic", Duration::from_secs(10));
        assert!(circuit.refusal().is_none());
        let calls = Arc::new(AtomicUsize::new(0));
        circuit.trip(
            "could not reach the model provider".into(),
            probe_answering_after(3, calls.clone()),
        );
        let refusal = circuit.refusal().expect("open");
        assert_eq!(refusal.kind, ErrorKind::Unavailable);
        assert!(
            refusal.message.contains("talon keeps trying"),
            "{}",
            refusal.message
        );
        // A second trip while open starts no second probe.
        circuit.trip("again".into(), probe_answering_after(1, calls.clone()));

        let waiter = tokio::spawn(circuit.wait_closed());
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(!waiter.is_finished(), "closed before the probe answered");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_secs(10)).await;
        waiter.await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(circuit.state(), CircuitState::Closed);
        assert!(circuit.refusal().is_none());
    }

    #[tokio::test]
    async fn waiting_on_a_closed_circuit_returns_at_once() {
        let circuit = Circuit::new("openai", Duration::from_secs(1));
        circuit.wait_closed().await;
        assert_eq!(circuit.describe()["circuit"], "closed");
    }
}
