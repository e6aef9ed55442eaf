//! [`Breaker`]: a circuit breaker in front of a backend.
//!
//! Closed, it lets every call through and counts consecutive failures; at the
//! threshold it opens and refuses calls (the caller serves defaults without waiting)
//! for the cool-down; then one probe goes through (half-open): its success closes the
//! circuit, its failure opens it again. So an outage costs each request nothing, and
//! recovery needs no operator.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            open_for: Duration::from_millis(500),
        }
    }
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out; everyone else is refused until it reports.
    Probing {
        since: Instant,
    },
}

/// A circuit breaker; see the module docs.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere mid-update of a plain enum.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may go through now.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut state = self.state();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::Probing { since: now };
                true
            }
            State::Open { .. } => false,
            // A probe that never reported (its caller was dropped) is written off.
            State::Probing { since } if now >= since + self.config.open_for => {
                *state = State::Probing { since: now };
                true
            }
            State::Probing { .. } => false,
        }
    }

    /// A call went through and succeeded.
    pub fn success(&self) {
        *self.state() = State::Closed { failures: 0 };
    }

    /// A call failed (error or timeout).
    pub fn failure(&self) {
        self.failure_at(Instant::now());
    }

    fn failure_at(&self, now: Instant) {
        let mut state = self.state();
        let open = State::Open {
            until: now + self.config.open_for,
        };
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.config.failures => State::Closed {
                failures: failures + 1,
            },
            _ => open,
        };
    }

    /// Whether calls are being refused (open, or waiting on a probe).
    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_once_after_the_cool_down_and_closes_on_success() {
        let b = Breaker::new(BreakerConfig {
            failures: 3,
            open_for: Duration::from_millis(100),
        });
        let t0 = Instant::now();
        b.failure_at(t0);
        b.failure_at(t0);
        assert!(b.allow_at(t0) && !b.is_open());
        b.failure_at(t0);
        assert!(b.is_open());
        assert!(!b.allow_at(t0 + Duration::from_millis(99)));
        let later = t0 + Duration::from_millis(100);
        assert!(b.allow_at(later), "one probe");
        assert!(!b.allow_at(later), "only one");
        b.failure_at(later);
        assert!(!b.allow_at(later + Duration::from_millis(50)), "open again");
        let probe = later + Duration::from_millis(100);
        assert!(b.allow_at(probe));
        b.success();
        assert!(!b.is_open() && b.allow_at(probe) && b.allow_at(probe));
    }

    #[test]
    fn a_success_resets_the_count_and_a_lost_probe_is_written_off() {
        let b = Breaker::new(BreakerConfig {
            failures: 2,
            open_for: Duration::from_millis(10),
        });
        let t0 = Instant::now();
        b.failure_at(t0);
        b.success();
        b.failure_at(t0);
        assert!(!b.is_open());
        b.failure_at(t0);
        assert!(b.is_open());
        let probe = t0 + Duration::from_millis(10);
        assert!(b.allow_at(probe));
        // The probe's caller vanished without reporting.
        assert!(!b.allow_at(probe + Duration::from_millis(5)));
        assert!(b.allow_at(probe + Duration::from_millis(10)));
    }
}
