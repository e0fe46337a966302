//! `--limit-rate`: a token bucket that paces the bytes handed to the connection, so an upload
//! leaves room on a shared satellite link for telemetry. Kept across requests: a reconnect
//! after a drop does not get a fresh burst.

use std::time::{Duration, Instant};

/// A token bucket of `rate` bytes per second that may run into debt; the debt is the wait.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket that allows `rate` bytes/s with bursts of a quarter second (at least 4 KiB).
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        let rate = rate.max(1) as f64;
        let burst = (rate / 4.0).max(4096.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` bytes; returns how long to wait before sending them.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// A chunk size that keeps pacing smooth: about 1/20 s of the rate, 1–64 KiB.
    pub fn chunk(&self) -> usize {
        ((self.rate / 20.0) as usize).clamp(1024, 64 << 10)
    }
}

/// Parses a rate: bytes per second with an optional `k`/`m`/`g` suffix (1024-based, as curl's
/// `--limit-rate`), or bits per second as `kbit`/`mbit`/`gbit` (1000-based, as `tc`).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let bad = || {
        format!("{text:?} is not a rate: write bytes per second like 100k or 1.5m, or bits per second like 800kbit")
    };
    let (number, factor) = if let Some(n) = t.strip_suffix("kbit") {
        (n, 1000.0 / 8.0)
    } else if let Some(n) = t.strip_suffix("mbit") {
        (n, 1e6 / 8.0)
    } else if let Some(n) = t.strip_suffix("gbit") {
        (n, 1e9 / 8.0)
    } else if let Some(n) = t.strip_suffix('k') {
        (n, 1024.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 1024.0 * 1024.0)
    } else if let Some(n) = t.strip_suffix('g') {
        (n, 1024.0 * 1024.0 * 1024.0)
    } else {
        (t.strip_suffix('b').unwrap_or(&t), 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    let rate = value * factor;
    if !rate.is_finite() || rate < 1.0 {
        return Err(bad());
    }
    Ok(rate as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_like_curl_and_tc() {
        assert_eq!(parse_rate("125000"), Ok(125_000));
        assert_eq!(parse_rate("100k"), Ok(102_400));
        assert_eq!(parse_rate("1.5M"), Ok(1_572_864));
        assert_eq!(parse_rate("1mbit"), Ok(125_000));
        assert_eq!(parse_rate("800kbit"), Ok(100_000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-5k").is_err());
    }

    #[test]
    fn the_bucket_holds_the_average_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(100_000, start);
        // Send 1 MB in chunks as fast as the waits allow: it must take about 10 s minus the
        // initial burst.
        let mut now = start;
        let mut sent = 0u64;
        while sent < 1_000_000 {
            let chunk = b.chunk() as u64;
            now += b.take(chunk, now);
            sent += chunk;
        }
        let secs = now.duration_since(start).as_secs_f64();
        assert!((9.6..=10.1).contains(&secs), "{secs}");
        // Idle time refills only up to the burst.
        now += Duration::from_secs(60);
        assert_eq!(b.take(25_000, now), Duration::ZERO);
        assert!(b.take(25_000, now) > Duration::from_millis(200));
    }
}
