//! Graph's request budget per app and mailbox (GRAPH.md: 10,000 requests per 10 minutes), kept
//! by pacing rather than discovered by 429s. A generic cell rate algorithm: each mailbox has a
//! theoretical arrival time (TAT); `n` requests may go when the TAT is at most `burst` ahead of
//! now, and push it `n × interval` further. The rate is 90 % of the budget and the burst 10 % of
//! it, so no window of the budget's length ever holds more than the budget.
//!
//! The TAT lives with the mailbox's lease: read when the lease is taken, kept in memory while it
//! is held (the lease is exclusive, so no other worker writes to the mailbox meanwhile), written
//! back when it is given up (`rate:{company}:{mailbox}`, expiring after the budget's window).

use std::time::Duration;

/// A mailbox's request budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Time per request at the paced rate, in microseconds.
    interval_us: u64,
    /// How far ahead of now the TAT may run, in microseconds.
    burst_us: u64,
    window: Duration,
}

impl Budget {
    /// `requests` per `window` (Graph: 10,000 per 600 s).
    pub fn new(requests: u32, window: Duration) -> Budget {
        let requests = u64::from(requests.max(10));
        let window_us = window.as_micros().max(1) as u64;
        let paced = requests * 9 / 10;
        let interval_us = window_us.div_ceil(paced).max(1);
        Budget {
            interval_us,
            // A window holds at most (window + burst) / interval + 1 requests: the budget.
            burst_us: (requests - paced).saturating_sub(1) * interval_us,
            window,
        }
    }

    /// How long a recorded TAT is worth keeping.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Reserves `n` requests at `now_us` against the TAT `tat_us` (`None`: nothing recent):
    /// `Ok(new TAT)` if they may go now, `Err(wait)` if not yet.
    pub fn reserve(&self, tat_us: Option<u64>, now_us: u64, n: usize) -> Result<u64, Duration> {
        let start = tat_us.unwrap_or(now_us).max(now_us);
        let ahead = start - now_us;
        if ahead > self.burst_us {
            return Err(Duration::from_micros(ahead - self.burst_us));
        }
        Ok(start + n as u64 * self.interval_us)
    }
}

/// Now, in microseconds since the epoch (the TAT's clock, shared by all workers).
pub fn now_us() -> u64 {
    jiff::Timestamp::now().as_microsecond().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_budget_never_fits_more_requests_in_any_window_than_it_allows() {
        let b = Budget::new(100, Duration::from_secs(10));
        // A client that sends as soon as it may, one request at a time, for a minute.
        let mut tat = None;
        let mut now = 0u64;
        let mut sent: Vec<u64> = Vec::new();
        while now < 60_000_000 {
            match b.reserve(tat, now, 1) {
                Ok(t) => {
                    tat = Some(t);
                    sent.push(now);
                }
                Err(wait) => now += wait.as_micros() as u64,
            }
        }
        for (i, start) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .take_while(|t| **t < start + 10_000_000)
                .count();
            assert!(
                in_window <= 100,
                "{in_window} requests in 10 s from {start}"
            );
        }
        // And it is not too shy: about 90 per 10 s once the burst is spent.
        assert!(sent.len() >= 6 * 90, "{} sent in 60 s", sent.len());
    }

    #[test]
    fn a_batch_reserves_all_its_requests_and_the_next_waits_for_them() {
        let b = Budget::new(100, Duration::from_secs(10));
        let tat = b.reserve(None, 0, 20).unwrap();
        // 20 requests ahead, past the burst of 9: the next batch waits for 11 of them.
        let wait = b.reserve(Some(tat), 0, 20).unwrap_err();
        assert!(
            wait > Duration::from_millis(1200) && wait < Duration::from_millis(1250),
            "{wait:?}"
        );
        let now = wait.as_micros() as u64;
        assert!(
            b.reserve(Some(tat), now, 20).is_ok(),
            "it may go once waited"
        );
    }
}
