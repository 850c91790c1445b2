//! Small pieces of async plumbing every loop uses: a backoff schedule that never gives up, and a
//! task that lives exactly as long as its owner.

use std::time::Duration;

/// Exponential backoff with jitter for reconnect and hold-and-retry loops (backon's schedule,
/// never giving up: these loops end on shutdown, not on a count).
pub struct Backoff {
    base: Duration,
    max: Duration,
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            delays: schedule(base, max),
        }
    }

    /// The next wait.
    pub fn delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }

    /// Back to the shortest wait (after a success).
    pub fn reset(&mut self) {
        self.delays = schedule(self.base, self.max);
    }
}

/// backon's exponential schedule with jitter, from `base` up to `max`, without end.
pub fn schedule(base: Duration, max: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// A duration in plain words: `45 s`, `12 min 5 s`, `3 h 20 min`, `2 d 4 h`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{} ms", d.as_millis()),
        1..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A background task that lives exactly as long as its owner (a lease, a claim): if the owner's
/// task is cancelled or the worker dies, the task stops (a renewer: the lease then runs out).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_up_to_its_cap_and_starts_over_after_a_reset() {
        let (base, max) = (Duration::from_millis(100), Duration::from_millis(800));
        let mut b = Backoff::new(base, max);
        let waits: Vec<Duration> = (0..8).map(|_| b.delay()).collect();
        assert!(
            waits.iter().all(|w| *w >= base && *w <= max * 2),
            "{waits:?}"
        );
        assert!(waits[7] >= max, "reaches the cap: {waits:?}");
        b.reset();
        assert!(b.delay() < max, "a reset starts over");
    }

    #[test]
    fn a_duration_reads_in_the_largest_units_that_fit() {
        for (secs, words) in [
            (0, "0 ms"),
            (45, "45 s"),
            (725, "12 min 5 s"),
            (12_000, "3 h 20 min"),
            (187_200, "2 d 4 h"),
        ] {
            assert_eq!(human_duration(Duration::from_secs(secs)), words);
        }
    }
}
