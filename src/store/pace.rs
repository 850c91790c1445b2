//! Graph's request budget per app and mailbox (GRAPH.md: 10,000 requests per 10 minutes), kept
//! by pacing rather than discovered by 429s. A generic cell rate algorithm: each mailbox has a
//! theoretical arrival time (TAT); `n` requests sent together may go when the last of them would
//! be at most `burst` ahead of now, and push the TAT `n × interval` further. A tenth of the
//! budget (at least a full `$batch`) may go at once and the rest is paced, so no window of the
//! budget's length ever holds more than the budget.
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
    /// How far ahead of now the last request of a reservation may be, in microseconds.
    burst_us: u64,
    /// The most requests one reservation may hold (a full `$batch` always fits).
    burst: u64,
    window: Duration,
}

/// The largest `$batch`: a reservation of this many requests must always be possible.
const LARGEST_BATCH: u64 = 20;

impl Budget {
    /// `requests` per `window` (Graph: 10,000 per 600 s). A tenth of the budget (at least a
    /// full `$batch`) may go at once; the rest is paced evenly over the window. A window then
    /// holds at most (window + burst) / interval + 1 = `requests` requests, however they are
    /// grouped into reservations.
    pub fn new(requests: u32, window: Duration) -> Budget {
        let requests = u64::from(requests).max(2 * LARGEST_BATCH);
        let burst = (requests / 10).max(LARGEST_BATCH);
        let paced = requests - burst;
        let window_us = window.as_micros().max(1) as u64;
        let interval_us = window_us.div_ceil(paced).max(1);
        Budget {
            interval_us,
            burst_us: (burst - 1) * interval_us,
            burst,
            window,
        }
    }

    /// How long a recorded TAT is worth keeping.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Reserves `n` requests sent together at `now_us`, against the TAT `tat_us` (`None`:
    /// nothing recent): `Ok(new TAT)` if they may go now, `Err(wait)` if not yet. Each of the
    /// `n` must conform, so the last one's place may be at most `burst` ahead of now.
    pub fn reserve(&self, tat_us: Option<u64>, now_us: u64, n: usize) -> Result<u64, Duration> {
        let n = (n as u64).clamp(1, self.burst);
        let start = tat_us.unwrap_or(now_us).max(now_us);
        let last = start + (n - 1) * self.interval_us;
        let ahead = last - now_us;
        if ahead > self.burst_us {
            return Err(Duration::from_micros(ahead - self.burst_us));
        }
        Ok(start + n * self.interval_us)
    }
}

/// Now, in microseconds since the epoch (the TAT's clock, shared by all workers).
pub fn now_us() -> u64 {
    jiff::Timestamp::now().as_microsecond().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that sends as soon as it may, `n` requests at a time, for a minute.
    fn greedy(b: &Budget, n: usize) -> Vec<u64> {
        let mut tat = None;
        let mut now = 0u64;
        let mut sent: Vec<u64> = Vec::new();
        while now < 60_000_000 {
            match b.reserve(tat, now, n) {
                Ok(t) => {
                    tat = Some(t);
                    sent.extend(std::iter::repeat_n(now, n));
                }
                Err(wait) => now += wait.as_micros() as u64,
            }
        }
        sent
    }

    fn most_in_any_window(sent: &[u64], window_us: u64) -> usize {
        (0..sent.len())
            .map(|i| {
                sent[i..]
                    .iter()
                    .take_while(|t| **t < sent[i] + window_us)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn a_full_budget_never_fits_more_requests_in_any_window_however_they_are_batched() {
        for (budget, window_s) in [(10_000, 600), (100, 10), (40, 3), (60, 6)] {
            let b = Budget::new(budget, Duration::from_secs(window_s));
            for n in [1, 7, 20] {
                let sent = greedy(&b, n);
                let most = most_in_any_window(&sent, window_s * 1_000_000);
                assert!(
                    most <= budget as usize,
                    "{budget} per {window_s} s in batches of {n}: {most} in one window"
                );
                // And it is not too shy: at least the paced rate over the minute.
                let paced = budget as usize - (budget as usize / 10).max(20);
                let minimum = paced * 60 / window_s as usize;
                assert!(
                    sent.len() >= minimum.min(budget as usize * 60 / window_s as usize) * 9 / 10,
                    "{budget} per {window_s} s in batches of {n}: {} in a minute",
                    sent.len()
                );
            }
        }
    }

    #[test]
    fn a_batch_reserves_all_its_requests_and_the_next_waits_for_them() {
        let b = Budget::new(100, Duration::from_secs(10));
        // A tenth of 100 is less than a batch: a full batch of 20 may go at once, paced at 80
        // per 10 s (125 ms each).
        let tat = b.reserve(None, 0, 20).unwrap();
        let wait = b.reserve(Some(tat), 0, 20).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_millis(2500),
            "the next batch waits for all 20"
        );
        let now = wait.as_micros() as u64;
        assert!(
            b.reserve(Some(tat), now, 20).is_ok(),
            "it may go once waited"
        );
    }
}
