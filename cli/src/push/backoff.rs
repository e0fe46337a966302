//! Retry delays: exponential backoff with "equal jitter" (half the delay fixed, half random),
//! so a fleet of clients behind one link that came back does not retry in lock step, while
//! every client still waits at least half the nominal delay.

use std::time::Duration;

/// Delays between retries: `initial`, doubling up to `max`, each jittered. `reset` after
/// progress, so a link that transfers between drops is not punished for earlier failures.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff that starts at `initial` and never waits more than `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// Forgets earlier failures (call after progress).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay before the next attempt; `random` is uniform in `[0, 1)`.
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let nominal = self
            .initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = nominal / 2;
        half + half.mul_f64(random.clamp(0.0, 1.0))
    }
}

/// A uniform random number in `[0, 1)` from the system's random source.
pub fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    // The system source does not fail on Linux; if it did, no jitter is the safe fallback.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_within_half() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let lows: Vec<Duration> = (0..6).map(|_| b.next_delay(0.0)).collect();
        assert_eq!(
            lows,
            [500, 1000, 2000, 4000, 5000, 5000].map(Duration::from_millis)
        );
        b.reset();
        assert_eq!(
            b.next_delay(0.999_999),
            Duration::from_millis(999) + Duration::from_nanos(999_500)
        );
        let r = random_unit();
        assert!((0.0..1.0).contains(&r));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(60));
        for _ in 0..100 {
            assert!(b.next_delay(0.5) <= Duration::from_secs(60));
        }
    }
}
