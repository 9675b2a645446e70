//! Batch retry rules (SPEC §4), as pure functions.
//!
//! A batch is in flight until its output is recorded. When it fails, what
//! happens next depends on two facts only: whether output was already sent
//! for it, and what kind of error it was.

use std::time::Duration;

use crate::messages::wire::ErrorKind;

/// Delay before retry `attempt` (1-based): `base · 2^(attempt-1)`,
/// i.e. 5, 10, 20, 40, 80 s with the default base.
pub fn batch_retry_delay(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    base.saturating_mul(factor)
}

/// What to do with a batch whose run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureDecision {
    /// Output already reached the user: keep the cursor where it is, so the
    /// batch is never answered twice.
    KeepCursor,
    /// The cursor stays before the batch; run it again after the delay.
    Retry { attempt: u32, delay: Duration },
    /// Retrying cannot help, or retries ran out: record the batch as failed
    /// and tell the user.
    GiveUp { attempts: u32 },
}

/// Decides a failed batch's fate. `failures_so_far` counts earlier failures
/// of the same batch.
pub fn on_batch_failure(
    output_sent: bool,
    kind: ErrorKind,
    failures_so_far: u32,
    max_retries: u32,
    base: Duration,
) -> FailureDecision {
    if output_sent {
        return FailureDecision::KeepCursor;
    }
    let attempt = failures_so_far + 1;
    if !kind.is_retryable() || attempt > max_retries {
        return FailureDecision::GiveUp { attempts: attempt };
    }
    FailureDecision::Retry {
        attempt,
        delay: batch_retry_delay(base, attempt),
    }
}

/// The one line a user sees when their message could not be processed:
/// what went wrong and how many times talon tried.
pub fn failure_notice(reason: &str, attempts: u32) -> String {
    let reason = reason.trim();
    let reason: String = reason.chars().take(300).collect();
    let reason = reason.replace(['\n', '\r'], " ");
    let tried = match attempts {
        0 | 1 => "tried once".to_string(),
        n => format!("tried {n} times"),
    };
    format!("⚠️ Your message could not be processed ({tried}): {reason}")
}

/// The one line a chat hears when its batch waits out a provider outage.
pub fn outage_notice(reason: &str) -> String {
    let reason: String = reason.trim().chars().take(300).collect();
    let reason = reason.replace(['\n', '\r'], " ");
    format!(
        "⚠️ The model provider is unreachable ({reason}). talon keeps trying and will answer as soon as it is back."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(5);

    #[test]
    fn delays_double_from_the_base() {
        let delays: Vec<u64> = (1..=5)
            .map(|n| batch_retry_delay(BASE, n).as_secs())
            .collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 80]);
        assert_eq!(batch_retry_delay(BASE, u32::MAX), BASE * (1 << 20));
    }

    #[test]
    fn output_already_sent_never_rolls_back() {
        assert_eq!(
            on_batch_failure(true, ErrorKind::Temporary, 0, 5, BASE),
            FailureDecision::KeepCursor
        );
    }

    #[test]
    fn transient_failures_retry_until_the_limit() {
        for n in 0..5 {
            assert_eq!(
                on_batch_failure(false, ErrorKind::Temporary, n, 5, BASE),
                FailureDecision::Retry {
                    attempt: n + 1,
                    delay: batch_retry_delay(BASE, n + 1)
                }
            );
        }
        assert_eq!(
            on_batch_failure(false, ErrorKind::RateLimited, 5, 5, BASE),
            FailureDecision::GiveUp { attempts: 6 }
        );
    }

    #[test]
    fn permanent_and_auth_errors_give_up_at_once() {
        for kind in [ErrorKind::Auth, ErrorKind::Permanent] {
            assert_eq!(
                on_batch_failure(false, kind, 0, 5, BASE),
                FailureDecision::GiveUp { attempts: 1 }
            );
        }
    }

    #[test]
    fn the_notice_is_one_short_line() {
        let long = "x".repeat(1000);
        let notice = failure_notice(&long, 6);
        assert!(notice.chars().count() < 400);
        assert!(notice.contains("tried 6 times"), "{notice}");
        assert!(!failure_notice("boom\nbang\n", 1).contains('\n'));
        assert!(failure_notice("boom", 1).contains("tried once"));
        let outage = outage_notice("could not reach it\n(refused)");
        assert!(
            !outage.contains('\n') && outage.contains("keeps trying"),
            "{outage}"
        );
    }
}
