//! A deadline that moves on every sign of life, with at most one timer
//! pending for it.
//!
//! Starting a fresh timer per event (every output line, every streamed
//! piece of a model answer) and ignoring the stale ones when they fire
//! leaves one sleeping task per event alive for the timer's whole length:
//! under steady traffic, tens of thousands of them for a 30-minute hard
//! timeout. Here the deadline moves and the one pending timer, when it
//! fires before the deadline, is started again for what is left.
//!
//! The actor owns the timer; this type only decides. A deadline only moves
//! later (each push is `now + the same length`), so the pending timer never
//! fires after it.

use tokio::time::{Duration, Instant};

/// One deadline and whether a timer for it is pending.
#[derive(Debug, Default)]
pub struct Deadline {
    at: Option<Instant>,
    pending: bool,
}

/// What a fired timer means.
#[derive(Debug, PartialEq, Eq)]
pub enum Fired {
    /// The deadline has passed: act on it.
    Expired,
    /// The deadline moved since the timer was started: start one for this.
    Early(Duration),
    /// Nothing is due (disarmed, or already acted on).
    Nothing,
}

impl Deadline {
    /// Moves the deadline to `now + after`. `Some(after)` means no timer is
    /// pending and the caller must start one for that long.
    pub fn push(&mut self, now: Instant, after: Duration) -> Option<Duration> {
        self.at = Some(now + after);
        if self.pending {
            None
        } else {
            self.pending = true;
            Some(after)
        }
    }

    /// No deadline until the next push; a pending timer fires as `Nothing`.
    pub fn disarm(&mut self) {
        self.at = None;
    }

    /// The pending timer fired at `now`.
    pub fn fired(&mut self, now: Instant) -> Fired {
        self.pending = false;
        match self.at {
            None => Fired::Nothing,
            Some(at) if now >= at => {
                self.at = None;
                Fired::Expired
            }
            Some(at) => {
                self.pending = true;
                Fired::Early(at - now)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn only_the_first_push_starts_a_timer() {
        let t0 = Instant::now();
        let mut d = Deadline::default();
        assert_eq!(d.push(t0, 10 * S), Some(10 * S));
        for i in 1..1000 {
            assert_eq!(d.push(t0 + Duration::from_millis(i), 10 * S), None);
        }
    }

    #[test]
    fn an_early_firing_asks_for_the_rest_and_then_expires() {
        let t0 = Instant::now();
        let mut d = Deadline::default();
        d.push(t0, 10 * S);
        d.push(t0 + 4 * S, 10 * S);
        assert_eq!(d.fired(t0 + 10 * S), Fired::Early(4 * S));
        // Still pending: a push now starts nothing.
        assert_eq!(d.push(t0 + 5 * S, 10 * S), None);
        assert_eq!(d.fired(t0 + 14 * S), Fired::Early(S));
        assert_eq!(d.fired(t0 + 15 * S), Fired::Expired);
        // Acted on: a stray firing is nothing, and the next push arms again.
        assert_eq!(d.fired(t0 + 16 * S), Fired::Nothing);
        assert_eq!(d.push(t0 + 16 * S, 10 * S), Some(10 * S));
    }

    #[test]
    fn a_disarmed_deadline_fires_as_nothing() {
        let t0 = Instant::now();
        let mut d = Deadline::default();
        d.push(t0, S);
        d.disarm();
        assert_eq!(d.fired(t0 + S), Fired::Nothing);
        assert_eq!(d.push(t0 + S, S), Some(S));
    }
}
