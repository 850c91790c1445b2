//! Outlook's per (app, mailbox) limits (GRAPH.md §4.1): requests in flight, a sliding
//! request-count window and a sliding upload-bytes window (POST/PATCH/PUT bodies). A request holds its slot (a [`Slot`] guard) for its whole life,
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
    /// Admitted upload bodies (POST/PATCH/PUT) in `upload_window`: (time, bytes).
    uploads: VecDeque<(Instant, u64)>,
    upload_sum: u64,
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
        upload_bytes: u64,
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
        }
        let upload_limit = settings.upload_bytes_per_window;
        if upload_limit > 0 && upload_bytes > 0 {
            let window = settings.upload_window;
            while let Some(&(t, bytes)) = pair.uploads.front() {
                if now.duration_since(t) < window {
                    break;
                }
                pair.upload_sum -= bytes;
                pair.uploads.pop_front();
            }
            if pair.upload_sum + upload_bytes > upload_limit {
                // Wait until enough of the oldest uploads have left the window.
                let mut freed = 0;
                let mut wait = window;
                for &(t, bytes) in &pair.uploads {
                    freed += bytes;
                    if pair.upload_sum - freed + upload_bytes <= upload_limit {
                        wait = (t + window).saturating_duration_since(now);
                        break;
                    }
                }
                return Err(Throttled::Window(wait));
            }
            pair.uploads.push_back((now, upload_bytes));
            pair.upload_sum += upload_bytes;
        }
        if per_window > 0 {
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
            if pair.in_flight == 0 && pair.window.is_empty() && pair.uploads.is_empty() {
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
        upload_bytes: u64,
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
            upload_bytes,
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
