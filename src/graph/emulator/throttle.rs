//! Outlook's per (app, mailbox) limits (GRAPH.md §4.1): requests in flight and a sliding
//! request-count window. A request holds its slot (a [`Slot`] guard) for its whole life,
//! including the configured latency.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Settings;
use super::state::Inner;

#[derive(Debug, Default)]
struct Pair {
    in_flight: u32,
    window: VecDeque<Instant>,
}

#[derive(Debug, Default)]
pub(crate) struct ThrottleState {
    /// (lowercase client id, mailbox) → state.
    pairs: HashMap<(String, String), Pair>,
    /// Lowercase UPN → admitted in flight (all apps).
    mailbox_in_flight: HashMap<String, u32>,
    total_in_flight: u32,
    pub max_per_mailbox: HashMap<String, u32>,
    pub max_any: u32,
}

pub(crate) enum Throttled {
    /// Over `max_concurrent_per_mailbox`.
    Concurrency,
    /// Over `requests_per_window`; a slot frees up after this long.
    Window(Duration),
}

impl ThrottleState {
    fn try_acquire(
        &mut self,
        pair_key: (String, String),
        upn: &str,
        settings: &Settings,
        now: Instant,
    ) -> Result<(), Throttled> {
        let pair = self.pairs.entry(pair_key).or_default();
        let limit = settings.max_concurrent_per_mailbox;
        if limit > 0 && pair.in_flight >= limit {
            return Err(Throttled::Concurrency);
        }
        let per_window = settings.requests_per_window as usize;
        if per_window > 0 {
            let window = settings.rate_window;
            while pair
                .window
                .front()
                .is_some_and(|&t| now.duration_since(t) >= window)
            {
                pair.window.pop_front();
            }
            if pair.window.len() >= per_window {
                // The request that has to leave the window before one more fits.
                let oldest = pair.window[pair.window.len() - per_window];
                let wait = (oldest + window).saturating_duration_since(now);
                if settings.rate_window_counts_throttled {
                    pair.window.push_back(now);
                }
                return Err(Throttled::Window(wait));
            }
            pair.window.push_back(now);
        }
        pair.in_flight += 1;
        let m = self.mailbox_in_flight.entry(upn.to_string()).or_default();
        *m += 1;
        let current = *m;
        let max = self.max_per_mailbox.entry(upn.to_string()).or_default();
        *max = (*max).max(current);
        self.total_in_flight += 1;
        self.max_any = self.max_any.max(self.total_in_flight);
        Ok(())
    }

    fn release(&mut self, pair_key: &(String, String), upn: &str) {
        if let Some(pair) = self.pairs.get_mut(pair_key) {
            pair.in_flight = pair.in_flight.saturating_sub(1);
            if pair.in_flight == 0 && pair.window.is_empty() {
                self.pairs.remove(pair_key);
            }
        }
        if let Some(m) = self.mailbox_in_flight.get_mut(upn) {
            *m = m.saturating_sub(1);
            if *m == 0 {
                self.mailbox_in_flight.remove(upn);
            }
        }
        self.total_in_flight = self.total_in_flight.saturating_sub(1);
    }
}

/// An admitted request's place; released on drop.
pub(crate) struct Slot {
    inner: Arc<Inner>,
    pair_key: (String, String),
    upn: String,
}

impl Slot {
    pub fn acquire(
        inner: &Arc<Inner>,
        client_id: &str,
        mailbox_id: &str,
        upn: &str,
        settings: &Settings,
    ) -> Result<Slot, Throttled> {
        let pair_key = (
            client_id.to_ascii_lowercase(),
            mailbox_id.to_ascii_lowercase(),
        );
        let upn = upn.to_ascii_lowercase();
        inner.throttle.lock().expect("throttle").try_acquire(
            pair_key.clone(),
            &upn,
            settings,
            Instant::now(),
        )?;
        Ok(Slot {
            inner: inner.clone(),
            pair_key,
            upn,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut t) = self.inner.throttle.lock() {
            t.release(&self.pair_key, &self.upn);
        }
    }
}
