//! What one container run may spend, enforced by the host (SPEC §8).
//!
//! The runner has per-turn limits of its own, but it runs inside the
//! boundary: a prompt injection that owns the agent's shell could forge its
//! protocol lines. So the host counts, per container run, model calls,
//! tokens, the bytes sent to chats (replies and `send_message` alike) and
//! host actions (a rate, as a token bucket), and clamps every request's
//! `max_tokens` to `[provider] max_tokens`. Everything here is pure: the
//! container actor asks, and on a refusal answers the runner with an error
//! and tells the chat once per kind of limit.

use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

/// The limits of one run, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunLimits {
    pub max_model_calls: u64,
    pub max_tokens: u64,
    /// Per-request cap on `max_tokens` (`[provider] max_tokens`).
    pub max_tokens_per_call: u32,
    /// Bytes of agent text sent to chats.
    pub max_output_bytes: u64,
    /// Sustained host actions per minute; the bucket holds a minute's worth.
    pub host_actions_per_minute: u32,
}

impl RunLimits {
    pub fn new(limits: &LimitsConfig, max_tokens_per_call: u32, max_output_bytes: u64) -> Self {
        RunLimits {
            max_model_calls: limits.max_model_calls_per_run,
            max_tokens: limits.max_tokens_per_run,
            max_tokens_per_call,
            max_output_bytes,
            host_actions_per_minute: limits.host_actions_per_minute,
        }
    }
}

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    ModelCalls,
    Tokens,
    Output,
    HostActionRate,
}

impl Limit {
    /// The one line the chat hears (once per run and kind).
    pub fn notice(self, limits: &RunLimits) -> String {
        match self {
            Limit::ModelCalls => format!(
                "[talon: this run reached its limit of {} model calls; the agent was stopped from calling the model again]",
                limits.max_model_calls
            ),
            Limit::Tokens => format!(
                "[talon: this run reached its limit of {} tokens; the agent was stopped from calling the model again]",
                limits.max_tokens
            ),
            Limit::Output => {
                "[talon: the agent's output was cut at the output cap]".to_string()
            }
            Limit::HostActionRate => format!(
                "[talon: the agent asked for more than {} host actions a minute; the extra ones were refused]",
                limits.host_actions_per_minute
            ),
        }
    }

    /// What the runner (and so the model) is told.
    pub fn refusal(self, limits: &RunLimits) -> String {
        match self {
            Limit::ModelCalls => format!(
                "refused by the host: this container run has used its {} model calls",
                limits.max_model_calls
            ),
            Limit::Tokens => format!(
                "refused by the host: this container run has used its {} tokens",
                limits.max_tokens
            ),
            Limit::Output => format!(
                "refused by the host: this run has sent its {} bytes of output to chats",
                limits.max_output_bytes
            ),
            Limit::HostActionRate => format!(
                "refused by the host: more than {} host actions a minute; wait and try again",
                limits.host_actions_per_minute
            ),
        }
    }
}

/// What a run has spent so far.
#[derive(Debug, Clone)]
pub struct RunBudget {
    limits: RunLimits,
    model_calls: u64,
    tokens: u64,
    output_bytes: u64,
    /// Host-action tokens left, refilled continuously.
    bucket: f64,
    refilled_at: Instant,
    noticed: Vec<Limit>,
}

impl RunBudget {
    pub fn new(limits: RunLimits, now: Instant) -> RunBudget {
        RunBudget {
            limits,
            model_calls: 0,
            tokens: 0,
            output_bytes: 0,
            bucket: f64::from(limits.host_actions_per_minute),
            refilled_at: now,
            noticed: Vec::new(),
        }
    }

    pub fn limits(&self) -> &RunLimits {
        &self.limits
    }

    /// Half or more of the run's model calls, tokens or output is spent. A
    /// warm container takes every follow-up of a busy chat into the same
    /// run, so at the end of a turn such a run is closed and the next
    /// message starts a fresh one: a chat is never left with a run that
    /// refuses everything, while one runaway turn still stops at the limit.
    pub fn mostly_spent(&self) -> bool {
        let half = |used: u64, max: u64| used.saturating_mul(2) >= max;
        half(self.model_calls, self.limits.max_model_calls)
            || half(self.tokens, self.limits.max_tokens)
            || half(self.output_bytes, self.limits.max_output_bytes)
    }

    /// Counts a model call, or refuses it when the run's calls or tokens
    /// are spent.
    pub fn admit_model_call(&mut self) -> Result<(), Limit> {
        if self.model_calls >= self.limits.max_model_calls {
            return Err(Limit::ModelCalls);
        }
        if self.tokens >= self.limits.max_tokens {
            return Err(Limit::Tokens);
        }
        self.model_calls += 1;
        Ok(())
    }

    /// Adds a reply's usage to the run's tokens.
    pub fn record_tokens(&mut self, input: u64, output: u64) {
        self.tokens = self.tokens.saturating_add(input).saturating_add(output);
    }

    /// Counts `bytes` of text for a chat, or refuses them whole when they
    /// would pass the output cap.
    pub fn admit_output(&mut self, bytes: u64) -> Result<(), Limit> {
        let total = self.output_bytes.saturating_add(bytes);
        if total > self.limits.max_output_bytes {
            return Err(Limit::Output);
        }
        self.output_bytes = total;
        Ok(())
    }

    /// Takes one host action from the bucket, or refuses when it is empty.
    pub fn admit_host_action(&mut self, now: Instant) -> Result<(), Limit> {
        let per_minute = f64::from(self.limits.host_actions_per_minute);
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.refilled_at = now;
        self.bucket = (self.bucket + elapsed.as_secs_f64() * per_minute / 60.0).min(per_minute);
        if self.bucket < 1.0 {
            return Err(Limit::HostActionRate);
        }
        self.bucket -= 1.0;
        Ok(())
    }

    /// True the first time `limit` is hit in this run: the chat is told
    /// once, not once per refused request.
    pub fn first_notice(&mut self, limit: Limit) -> bool {
        if self.noticed.contains(&limit) {
            return false;
        }
        self.noticed.push(limit);
        true
    }

    /// Whether `limit` was hit in this run.
    pub fn hit(&self, limit: Limit) -> bool {
        self.noticed.contains(&limit)
    }

    pub fn model_calls(&self) -> u64 {
        self.model_calls
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    pub fn output_bytes(&self) -> u64 {
        self.output_bytes
    }
}

/// The `max_tokens` actually asked of the provider: never above the cap.
pub fn clamp_max_tokens(asked: u32, cap: u32) -> u32 {
    asked.clamp(1, cap.max(1))
}

/// How long an idle bucket takes to refill completely (for docs and tests).
pub const BUCKET_REFILL: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RunLimits {
        RunLimits {
            max_model_calls: 3,
            max_tokens: 1000,
            max_tokens_per_call: 4096,
            max_output_bytes: 100,
            host_actions_per_minute: 6,
        }
    }

    #[test]
    fn model_calls_stop_at_the_call_limit_and_at_the_token_limit() {
        let now = Instant::now();
        let mut budget = RunBudget::new(limits(), now);
        for _ in 0..3 {
            assert_eq!(budget.admit_model_call(), Ok(()));
        }
        assert_eq!(budget.admit_model_call(), Err(Limit::ModelCalls));

        let mut budget = RunBudget::new(limits(), now);
        assert_eq!(budget.admit_model_call(), Ok(()));
        budget.record_tokens(600, 400);
        assert_eq!(budget.admit_model_call(), Err(Limit::Tokens));
        assert_eq!(budget.tokens(), 1000);
    }

    #[test]
    fn output_is_refused_whole_past_the_cap() {
        let mut budget = RunBudget::new(limits(), Instant::now());
        assert_eq!(budget.admit_output(60), Ok(()));
        assert_eq!(budget.admit_output(41), Err(Limit::Output));
        assert_eq!(budget.admit_output(40), Ok(()));
        assert_eq!(budget.output_bytes(), 100);
        assert_eq!(budget.admit_output(1), Err(Limit::Output));
    }

    #[test]
    fn host_actions_are_a_bucket_that_refills_over_a_minute() {
        let start = Instant::now();
        let mut budget = RunBudget::new(limits(), start);
        for _ in 0..6 {
            assert_eq!(budget.admit_host_action(start), Ok(()));
        }
        assert_eq!(budget.admit_host_action(start), Err(Limit::HostActionRate));
        // 6 a minute: one more every 10 s.
        let later = start + Duration::from_secs(10);
        assert_eq!(budget.admit_host_action(later), Ok(()));
        assert_eq!(budget.admit_host_action(later), Err(Limit::HostActionRate));
        // A long pause refills to a minute's worth, not more.
        let much_later = later + BUCKET_REFILL * 10;
        for _ in 0..6 {
            assert_eq!(budget.admit_host_action(much_later), Ok(()));
        }
        assert!(budget.admit_host_action(much_later).is_err());
    }

    #[test]
    fn a_run_is_mostly_spent_at_half_of_any_budget() {
        let now = Instant::now();
        let mut calls = RunBudget::new(limits(), now);
        assert!(!calls.mostly_spent());
        calls.admit_model_call().unwrap();
        assert!(!calls.mostly_spent(), "1 of 3 calls");
        calls.admit_model_call().unwrap();
        assert!(calls.mostly_spent(), "2 of 3 calls");

        let mut tokens = RunBudget::new(limits(), now);
        tokens.record_tokens(limits().max_tokens / 2 - 1, 0);
        assert!(!tokens.mostly_spent());
        tokens.record_tokens(0, 1);
        assert!(tokens.mostly_spent());

        let mut output = RunBudget::new(limits(), now);
        output.admit_output(limits().max_output_bytes / 2).unwrap();
        assert!(output.mostly_spent());
    }

    #[test]
    fn each_limit_is_noticed_once() {
        let mut budget = RunBudget::new(limits(), Instant::now());
        assert!(budget.first_notice(Limit::Output));
        assert!(!budget.first_notice(Limit::Output));
        assert!(budget.first_notice(Limit::Tokens));
    }

    #[test]
    fn max_tokens_is_clamped_to_the_configured_cap() {
        assert_eq!(clamp_max_tokens(987_654, 4096), 4096);
        assert_eq!(clamp_max_tokens(100, 4096), 100);
        assert_eq!(clamp_max_tokens(0, 4096), 1);
    }

    #[test]
    fn notices_name_the_limit() {
        let l = limits();
        assert!(Limit::ModelCalls.notice(&l).contains("3 model calls"));
        assert!(Limit::Tokens.refusal(&l).contains("1000 tokens"));
        assert!(Limit::HostActionRate.notice(&l).contains("6 host actions"));
    }
}
