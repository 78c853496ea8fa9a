//! Reconnecting with exponential back-off and jitter.
//!
//! The reference leaves reconnecting to the application (hass-nabucasa
//! retries with back-off); here it is built in and off by default.

use std::time::Duration;

/// How long to wait between connection attempts.
///
/// The n-th consecutive failed attempt waits `initial * multiplier^n`,
/// at most `max`, varied by up to `±jitter` of itself (so many devices that
/// lost the same server do not all come back at the same instant). The
/// delay starts again from `initial` after a connection that proved healthy
/// (it answered a ping, or stayed up for 30 s).
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// The first delay (1 s).
    pub initial: Duration,
    /// The longest delay (5 min).
    pub max: Duration,
    /// Growth per failed attempt (2.0); values below 1 count as 1.
    pub multiplier: f64,
    /// Relative random variation, 0.0 to 1.0 (0.2: ±20 %).
    pub jitter: f64,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl ReconnectPolicy {
    /// The delay before attempt `attempt` (0 for the first retry), with
    /// `unit` in `[0, 1)` choosing where in the jitter band it falls.
    pub(crate) fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let multiplier = if self.multiplier.is_finite() && self.multiplier > 1.0 {
            self.multiplier
        } else {
            1.0
        };
        let max = self.max.as_secs_f64();
        let exponent = i32::try_from(attempt).unwrap_or(i32::MAX);
        let base = if self.initial.is_zero() {
            0.0
        } else {
            (self.initial.as_secs_f64() * multiplier.powi(exponent)).min(max)
        };
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let factor = 1.0 + jitter * (2.0 * unit - 1.0);
        let seconds = (base * factor).clamp(0.0, max);
        Duration::try_from_secs_f64(seconds).unwrap_or(self.max)
    }
}

/// The state of one back-off sequence.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: ReconnectPolicy,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(policy: ReconnectPolicy) -> Backoff {
        Backoff { policy, attempt: 0 }
    }

    /// The next delay; each call grows the following one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.policy.delay(self.attempt, rand::random::<f64>());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Start again from the initial delay.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn grows_exponentially_and_caps() {
        let policy = ReconnectPolicy {
            jitter: 0.0,
            ..ReconnectPolicy::default()
        };
        let delays: Vec<f64> = (0..12).map(|n| secs(policy.delay(n, 0.5))).collect();
        assert_eq!(
            delays,
            [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0, 300.0
            ]
        );
        assert_eq!(secs(policy.delay(u32::MAX, 0.5)), 300.0);
    }

    #[test]
    fn jitter_stays_in_band_and_under_max() {
        let policy = ReconnectPolicy::default();
        assert!((secs(policy.delay(2, 0.0)) - 3.2).abs() < 1e-9);
        assert!((secs(policy.delay(2, 1.0)) - 4.8).abs() < 1e-9);
        assert_eq!(secs(policy.delay(20, 1.0)), 300.0);
        let mut backoff = Backoff::new(policy);
        for n in 0..40 {
            let d = secs(backoff.next_delay());
            let base = (2f64.powi(n)).min(300.0);
            assert!(d >= base * 0.8 - 1e-9 && d <= (base * 1.2).min(300.0) + 1e-9);
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(ReconnectPolicy {
            jitter: 0.0,
            ..ReconnectPolicy::default()
        });
        backoff.next_delay();
        backoff.next_delay();
        assert_eq!(backoff.next_delay(), Duration::from_secs(4));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn odd_values_are_tamed() {
        let policy = ReconnectPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: f64::NAN,
            jitter: 7.0,
        };
        for n in 0..5 {
            let d = policy.delay(n, 0.99);
            assert!(d <= Duration::from_secs(1));
        }
        let policy = ReconnectPolicy {
            multiplier: 0.5,
            jitter: 0.0,
            ..ReconnectPolicy::default()
        };
        assert_eq!(policy.delay(5, 0.3), Duration::from_secs(1));
    }
}
