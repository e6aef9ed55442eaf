//! [`Breaker`]: a circuit breaker in front of a backend.
//!
//! Closed, it lets every call through and counts calls and failures in a tumbling
//! window; when a window holds at least `failures` failures making at least
//! `failure_ratio` of its calls, it opens and refuses calls (the caller serves defaults
//! without waiting) for the cool-down; then one probe goes through (half-open): its
//! success closes the circuit, its failure opens it again. So an outage costs each
//! request nothing, recovery needs no operator, and a short hiccup (a few slow calls
//! among many good ones) does not turn into a cool-down of degraded answers.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Failures in one window that (at the failure ratio) open the circuit.
    pub failures: u32,
    /// The share of a window's calls that must have failed.
    pub failure_ratio: f64,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 10,
            failure_ratio: 0.5,
            window: Duration::from_secs(1),
            open_for: Duration::from_millis(250),
        }
    }
}

#[derive(Debug)]
enum State {
    /// Calls and failures counted since `since`.
    Closed {
        since: Instant,
        calls: u32,
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
            state: Mutex::new(State::Closed {
                since: Instant::now(),
                calls: 0,
                failures: 0,
            }),
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
        self.record(Instant::now(), false);
    }

    /// A call failed (error or timeout).
    pub fn failure(&self) {
        self.record(Instant::now(), true);
    }

    fn record(&self, now: Instant, failed: bool) {
        let mut state = self.state();
        let (since, calls, failures) = match *state {
            State::Closed {
                since,
                calls,
                failures,
            } if now < since + self.config.window => (since, calls, failures),
            // A new window; or the probe's answer, which starts one.
            State::Closed { .. } | State::Probing { .. } if !failed => (now, 0, 0),
            State::Closed { .. } => (now, 0, 0),
            // A failed probe, or a late failure while open: open (again).
            State::Open { .. } | State::Probing { .. } => {
                *state = State::Open {
                    until: now + self.config.open_for,
                };
                return;
            }
        };
        let calls = calls.saturating_add(1);
        let failures = failures.saturating_add(u32::from(failed));
        let ratio = f64::from(failures) / f64::from(calls);
        *state = if failed && failures >= self.config.failures && ratio >= self.config.failure_ratio
        {
            State::Open {
                until: now + self.config.open_for,
            }
        } else {
            State::Closed {
                since,
                calls,
                failures,
            }
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

    fn config(failures: u32) -> BreakerConfig {
        BreakerConfig {
            failures,
            failure_ratio: 0.5,
            window: Duration::from_secs(1),
            open_for: Duration::from_millis(100),
        }
    }

    #[test]
    fn opens_on_enough_failures_probes_once_after_the_cool_down_and_closes_on_success() {
        let b = Breaker::new(config(3));
        let t0 = Instant::now();
        b.record(t0, true);
        b.record(t0, true);
        assert!(b.allow_at(t0) && !b.is_open());
        b.record(t0, true);
        assert!(b.is_open());
        assert!(!b.allow_at(t0 + Duration::from_millis(99)));
        let later = t0 + Duration::from_millis(100);
        assert!(b.allow_at(later), "one probe");
        assert!(!b.allow_at(later), "only one");
        b.record(later, true);
        assert!(!b.allow_at(later + Duration::from_millis(50)), "open again");
        let probe = later + Duration::from_millis(100);
        assert!(b.allow_at(probe));
        b.record(probe, false);
        assert!(!b.is_open() && b.allow_at(probe) && b.allow_at(probe));
        // A fresh window after the probe: one more failure does not reopen it.
        b.record(probe, true);
        assert!(!b.is_open());
    }

    #[test]
    fn a_few_failures_among_many_successes_keep_it_closed() {
        let b = Breaker::new(config(3));
        let t0 = Instant::now();
        for i in 0..100 {
            b.record(t0, i % 10 == 0);
        }
        assert!(!b.is_open(), "10 failures in 100 calls: under the ratio");
        // Failures spread over windows never add up.
        let b = Breaker::new(config(3));
        let t0 = Instant::now();
        for w in 0..5 {
            let at = t0 + Duration::from_millis(1100 * w);
            b.record(at, true);
            b.record(at, true);
        }
        assert!(!b.is_open());
    }

    #[test]
    fn a_lost_probe_is_written_off() {
        let b = Breaker::new(config(1));
        let t0 = Instant::now();
        b.record(t0, true);
        assert!(b.is_open());
        let probe = t0 + Duration::from_millis(100);
        assert!(b.allow_at(probe));
        // The probe's caller vanished without reporting.
        assert!(!b.allow_at(probe + Duration::from_millis(50)));
        assert!(b.allow_at(probe + Duration::from_millis(100)));
    }
}
