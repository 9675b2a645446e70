//! The host's provider set (HEAVY and an optional LIGHT tier) and the
//! routing log (spec §7).
//!
//! [`Providers::for_batch`] decides a batch's tier with the pure
//! [`route`](super::router::route) and hands back the provider for that run,
//! wrapped so every model call of the run is measured. The log,
//! `<home>/logs/routing-metrics.jsonl`, gets one `"event":"route"` line per
//! decision and one `"event":"model_call"` line per model call (with the
//! decision repeated, latency and tokens), so a run that never calls the
//! model still shows its decision, and a tool-heavy run shows every call.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::json;

use super::router::{batch_text_of_prompt, route, Tier};
use super::{ModelFailure, ModelReply, ModelRequest, Provider};
use crate::config::RouterConfig;

/// Why a batch went where it went; repeated in every log line of its run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoutingDecision {
    pub group: String,
    pub tier: Tier,
    pub reason: String,
    pub provider: String,
    pub model: String,
}

/// Appends JSON lines to the routing log. Failures to write are logged and
/// otherwise ignored: metrics must never stop a reply.
#[derive(Debug)]
pub struct RoutingLog {
    path: PathBuf,
    /// One line at a time, so concurrent groups never interleave.
    lock: Mutex<()>,
}

impl RoutingLog {
    pub fn new(path: impl Into<PathBuf>) -> RoutingLog {
        RoutingLog {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn append(&self, line: &serde_json::Value) {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut text = line.to_string();
        text.push('\n');
        // The current file keeps its name; a new local day moves the last
        // one to `routing-metrics.YYYY-MM-DD.jsonl` first (7 kept).
        if let Err(err) = crate::logging::append_rotating(&self.path, text.as_bytes()) {
            tracing::warn!(path = %self.path.display(), %err, "cannot write the routing log");
        }
    }

    /// One line of `fields` with a timestamp (the credential proxy's calls,
    /// which have no routing decision).
    pub fn record_call(&self, fields: serde_json::Value) {
        let mut line = json!({
            "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
            line.extend(fields);
        }
        self.append(&line);
    }

    fn record(&self, event: &str, decision: &RoutingDecision, extra: serde_json::Value) {
        let mut line = json!({
            "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "event": event,
            "group": decision.group,
            "tier": decision.tier,
            "reason": decision.reason,
            "provider": decision.provider,
            "model": decision.model,
        });
        if let (Some(line), serde_json::Value::Object(extra)) = (line.as_object_mut(), extra) {
            line.extend(extra);
        }
        self.append(&line);
    }
}

/// The providers the host can route to.
pub struct Providers {
    heavy: Arc<dyn Provider>,
    light: Option<Arc<dyn Provider>>,
    router: RouterConfig,
    log: Option<Arc<RoutingLog>>,
}

impl Providers {
    /// `light: None` means every batch goes HEAVY; `log: None` writes no
    /// routing log (and leaves the providers unwrapped).
    pub fn new(
        heavy: Arc<dyn Provider>,
        light: Option<Arc<dyn Provider>>,
        router: RouterConfig,
        log: Option<Arc<RoutingLog>>,
    ) -> Providers {
        Providers {
            heavy,
            light,
            router,
            log,
        }
    }

    pub fn heavy(&self) -> &Arc<dyn Provider> {
        &self.heavy
    }

    pub fn light(&self) -> Option<&Arc<dyn Provider>> {
        self.light.as_ref()
    }

    /// The provider for one run of `group`, whose agent prompt is `prompt`,
    /// and why. `group_tier` is the group's own choice, if any;
    /// `group_model`, when set, replaces the chosen tier's model.
    pub fn for_batch(
        &self,
        group: &str,
        group_tier: Option<Tier>,
        group_model: Option<&str>,
        prompt: &str,
    ) -> (Arc<dyn Provider>, RoutingDecision) {
        let (tier, reason) = route(&batch_text_of_prompt(prompt), group_tier, &self.router);
        let (provider, tier, reason) = match (tier, &self.light) {
            (Tier::Light, Some(light)) => (Arc::clone(light), Tier::Light, reason),
            (Tier::Light, None) => (
                Arc::clone(&self.heavy),
                Tier::Heavy,
                format!("{reason}; no light tier configured"),
            ),
            (Tier::Heavy, _) => (Arc::clone(&self.heavy), Tier::Heavy, reason),
        };
        let provider = match group_model {
            Some(model) if model != provider.model() => match provider.with_model(model) {
                Some(switched) => switched,
                None => {
                    tracing::warn!(
                        group,
                        provider = provider.name(),
                        model,
                        "this provider cannot switch models; the group's model is ignored"
                    );
                    provider
                }
            },
            _ => provider,
        };
        let decision = RoutingDecision {
            group: group.to_string(),
            tier,
            reason,
            provider: provider.name().to_string(),
            model: provider.model().to_string(),
        };
        tracing::debug!(group, %tier, reason = %decision.reason, model = %decision.model, "routed a batch");
        let Some(log) = &self.log else {
            return (provider, decision);
        };
        log.record("route", &decision, json!({}));
        let metered = MeteredProvider {
            inner: provider,
            decision: decision.clone(),
            log: Arc::clone(log),
        };
        (Arc::new(metered), decision)
    }
}

/// A run's provider, logging each call with the run's routing decision.
struct MeteredProvider {
    inner: Arc<dyn Provider>,
    decision: RoutingDecision,
    log: Arc<RoutingLog>,
}

impl Provider for MeteredProvider {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn circuit(&self) -> Option<Arc<super::circuit::Circuit>> {
        self.inner.circuit()
    }

    fn model(&self) -> &str {
        self.inner.model()
    }

    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelReply, ModelFailure>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.complete(request).await;
            let latency_ms = started.elapsed().as_millis() as u64;
            let outcome = match &result {
                Ok(reply) => json!({
                    "latency_ms": latency_ms,
                    "ok": true,
                    "input_tokens": reply.input_tokens,
                    "output_tokens": reply.output_tokens,
                    "stop_reason": reply.stop_reason,
                }),
                Err(failure) => json!({
                    "latency_ms": latency_ms,
                    "ok": false,
                    "error_kind": failure.kind,
                }),
            };
            self.log.record("model_call", &self.decision, outcome);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::wire::{ContentBlock, ErrorKind};

    /// Answers with fixed token counts, or fails when told to.
    struct Scripted {
        name: &'static str,
        fail: bool,
    }

    impl Provider for Scripted {
        fn name(&self) -> &str {
            self.name
        }

        fn model(&self) -> &str {
            "model-of-scripted"
        }

        fn complete(
            &self,
            _request: ModelRequest,
        ) -> BoxFuture<'_, Result<ModelReply, ModelFailure>> {
            let fail = self.fail;
            Box::pin(async move {
                if fail {
                    return Err(ModelFailure {
                        kind: ErrorKind::RateLimited,
                        message: "slow down".into(),
                    });
                }
                Ok(ModelReply {
                    id: "r1".into(),
                    content: vec![ContentBlock::Text { text: "ok".into() }],
                    stop_reason: Some("end_turn".into()),
                    input_tokens: 11,
                    output_tokens: 3,
                })
            })
        }
    }

    /// Answers with the model it asks for; can switch models.
    struct Switchable {
        name: &'static str,
        model: String,
    }

    impl Provider for Switchable {
        fn name(&self) -> &str {
            self.name
        }

        fn model(&self) -> &str {
            &self.model
        }

        fn complete(
            &self,
            _request: ModelRequest,
        ) -> BoxFuture<'_, Result<ModelReply, ModelFailure>> {
            Box::pin(async move {
                Ok(ModelReply {
                    id: "r1".into(),
                    content: vec![ContentBlock::Text {
                        text: format!("answered by {}", self.model),
                    }],
                    stop_reason: Some("end_turn".into()),
                    input_tokens: 1,
                    output_tokens: 1,
                })
            })
        }

        fn with_model(&self, model: &str) -> Option<Arc<dyn Provider>> {
            Some(switchable(self.name, model))
        }
    }

    fn switchable(name: &'static str, model: &str) -> Arc<dyn Provider> {
        Arc::new(Switchable {
            name,
            model: model.to_string(),
        })
    }

    fn scripted(name: &'static str, fail: bool) -> Arc<dyn Provider> {
        Arc::new(Scripted { name, fail })
    }

    fn router(enabled: bool) -> RouterConfig {
        RouterConfig {
            enabled,
            light_max_chars: 20,
            heavy_keywords: vec!["debug".into()],
        }
    }

    fn request() -> ModelRequest {
        ModelRequest {
            system: String::new(),
            messages: Vec::new(),
            max_tokens: 10,
            tools: Vec::new(),
        }
    }

    fn lines(log: &RoutingLog) -> Vec<serde_json::Value> {
        std::fs::read_to_string(log.path())
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn each_batch_is_one_route_line_and_each_model_call_one_more() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(RoutingLog::new(
            dir.path().join("logs/routing-metrics.jsonl"),
        ));
        let providers = Providers::new(
            scripted("heavy-one", false),
            Some(scripted("light-one", false)),
            router(true),
            Some(Arc::clone(&log)),
        );
        let batches = ["hi", "please debug my build script", "!heavy hi"];
        for batch in batches {
            let (provider, _) = providers.for_batch("family", None, None, batch);
            provider.complete(request()).await.unwrap();
        }
        let (_, short) = providers.for_batch("family", None, None, "yo");
        assert_eq!(short.tier, Tier::Light);

        let lines = lines(&log);
        let routes: Vec<_> = lines.iter().filter(|l| l["event"] == "route").collect();
        let calls: Vec<_> = lines
            .iter()
            .filter(|l| l["event"] == "model_call")
            .collect();
        assert_eq!(routes.len(), batches.len() + 1);
        assert_eq!(calls.len(), batches.len());
        let tiers: Vec<_> = routes.iter().map(|l| l["tier"].as_str().unwrap()).collect();
        assert_eq!(tiers, ["light", "heavy", "heavy", "light"]);
        assert_eq!(calls[0]["provider"], "light-one");
        assert_eq!(calls[1]["provider"], "heavy-one");
        assert_eq!(calls[1]["reason"], "keyword \"debug\"");
        assert_eq!(calls[2]["reason"], "prefix !heavy");
        for call in &calls {
            assert_eq!(call["group"], "family");
            assert_eq!(call["model"], "model-of-scripted");
            assert_eq!(call["ok"], true);
            assert_eq!(
                (
                    call["input_tokens"].as_u64(),
                    call["output_tokens"].as_u64()
                ),
                (Some(11), Some(3))
            );
            assert!(call["latency_ms"].is_u64());
            assert!(call["ts"].is_string());
        }
    }

    #[tokio::test]
    async fn failures_are_logged_with_their_kind_and_still_returned() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(RoutingLog::new(dir.path().join("routing-metrics.jsonl")));
        let providers = Providers::new(
            scripted("h", true),
            None,
            router(false),
            Some(Arc::clone(&log)),
        );
        let (provider, _) = providers.for_batch("g", None, None, "hi");
        let failure = provider.complete(request()).await.unwrap_err();
        assert_eq!(failure.kind, ErrorKind::RateLimited);
        let lines = lines(&log);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["ok"], false);
        assert_eq!(lines[1]["error_kind"], "rate_limited");
    }

    #[test]
    fn light_without_a_light_provider_falls_back_to_heavy_and_says_so() {
        let providers = Providers::new(scripted("h", false), None, router(true), None);
        let (provider, decision) = providers.for_batch("g", Some(Tier::Light), None, "hi");
        assert_eq!(provider.name(), "h");
        assert_eq!(decision.tier, Tier::Heavy);
        assert_eq!(decision.reason, "group setting; no light tier configured");
    }

    #[test]
    fn the_group_setting_picks_light_even_with_the_router_off() {
        let providers = Providers::new(
            scripted("h", false),
            Some(scripted("l", false)),
            router(false),
            None,
        );
        let (provider, decision) = providers.for_batch(
            "g",
            Some(Tier::Light),
            None,
            "a long batch about anything at all",
        );
        assert_eq!(provider.name(), "l");
        assert_eq!(decision.tier, Tier::Light);
        let (provider, decision) = providers.for_batch("g", None, None, "hi");
        assert_eq!(provider.name(), "h");
        assert_eq!(decision.reason, "router disabled");
    }

    #[tokio::test]
    async fn the_group_model_replaces_the_chosen_tiers_model_and_is_logged() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(RoutingLog::new(dir.path().join("routing-metrics.jsonl")));
        let providers = Providers::new(
            switchable("heavy-one", "big-model"),
            Some(switchable("light-one", "small-model")),
            router(false),
            Some(Arc::clone(&log)),
        );
        let (provider, decision) =
            providers.for_batch("g", Some(Tier::Light), Some("special-model"), "hi");
        assert_eq!(
            (
                decision.tier,
                decision.provider.as_str(),
                decision.model.as_str()
            ),
            (Tier::Light, "light-one", "special-model")
        );
        assert_eq!(provider.model(), "special-model");
        let reply = provider.complete(request()).await.unwrap();
        assert_eq!(
            reply.content,
            vec![ContentBlock::Text {
                text: "answered by special-model".into()
            }]
        );
        let (provider, decision) = providers.for_batch("g", None, Some("special-model"), "hi");
        assert_eq!(
            (
                decision.tier,
                decision.provider.as_str(),
                decision.model.as_str()
            ),
            (Tier::Heavy, "heavy-one", "special-model")
        );
        assert_eq!(provider.model(), "special-model");
        // The tiers themselves keep their own models.
        let (_, plain) = providers.for_batch("g", Some(Tier::Light), None, "hi");
        assert_eq!(plain.model, "small-model");
        assert_eq!(providers.heavy().model(), "big-model");

        let lines = lines(&log);
        let models: Vec<_> = lines.iter().map(|l| l["model"].as_str().unwrap()).collect();
        assert_eq!(
            models,
            [
                "special-model",
                "special-model",
                "special-model",
                "small-model"
            ]
        );
        assert_eq!(lines[1]["event"], "model_call");
    }

    #[test]
    fn a_provider_that_cannot_switch_models_keeps_its_own() {
        let providers = Providers::new(scripted("h", false), None, router(false), None);
        let (provider, decision) = providers.for_batch("g", None, Some("special-model"), "hi");
        assert_eq!(provider.model(), "model-of-scripted");
        assert_eq!(decision.model, "model-of-scripted");
    }
}
