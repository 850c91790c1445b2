//! A change in flight through the scheduler, and the claim it belongs to.

use std::sync::Arc;

use jiff::Timestamp;

use super::batch::{MailboxKey, Step};
use super::intake::Claimed;
use super::plan::OpKind;
use crate::graph::error::GraphError;
use crate::ledger::{self, Entry};
use crate::metrics::Metrics;
use crate::store::{Drift, Member};

/// A claimed schedule and how many of its changes are still open.
pub struct Held {
    pub member: Member,
    pub open: usize,
    pub settlement: Settlement,
}

/// A change in flight through the scheduler.
pub struct Work {
    pub claimed: Arc<Claimed>,
    /// The id of its claim in `held`.
    pub claim: u64,
    pub company: String,
    pub mailbox: String,
    pub user: String,
    pub kind: OpKind,
    pub step: Step,
    /// Attempts of the current request that count against `retry.max_attempts`.
    pub attempts: u32,
    pub first_failure: Option<Timestamp>,
    pub last_failure: Option<Timestamp>,
    /// How often Graph throttled this change (429, or 503 with `Retry-After`), and the last
    /// `Retry-After` it gave: a change given up on says so.
    pub throttled: u32,
    pub last_retry_after: Option<std::time::Duration>,
    /// The repair pass found this copy changed in Outlook (`repair`): the write restores it.
    pub drift: Option<Drift>,
}

impl Work {
    pub fn key(&self) -> MailboxKey {
        (self.company.clone(), self.mailbox.clone())
    }

    pub fn revision(&self) -> u64 {
        self.claimed.event.revision
    }

    /// How long ago the change was staged (or replayed); `fallback` if the record predates
    /// the staging time.
    pub fn age(&self, fallback: std::time::Duration) -> std::time::Duration {
        match self.claimed.staged.staged_at_ms {
            Some(at) => std::time::Duration::from_millis(
                (Timestamp::now().as_millisecond().max(0) as u64).saturating_sub(at),
            ),
            None => fallback,
        }
    }

    /// The ledger's reason for a finished change: a write that restored a copy changed in
    /// Outlook says so (and counts as repaired, by the kind of drift found).
    pub fn ledger_reason<'r>(
        &self,
        op: &str,
        written: bool,
        reason: &'r str,
        metrics: &Metrics,
    ) -> &'r str {
        let Some(drift) = self.drift.filter(|_| written) else {
            return reason;
        };
        let restored = match op {
            "create" => "recreated_after_outlook_delete",
            "update" => "restored_after_outlook_edit",
            _ => return reason,
        };
        metrics
            .drift
            .repaired
            .get_or_create(&Metrics::label("kind", drift.as_str()))
            .inc();
        restored
    }

    /// Why a change Graph kept refusing was given up, in plain words.
    pub fn gave_up_after(&self, give_up_after: std::time::Duration) -> String {
        let tried = match (self.first_failure, self.last_failure) {
            (Some(a), Some(b)) => format!(
                "for {}",
                crate::runtime::human_duration(b.duration_since(a).unsigned_abs())
            ),
            _ => "for a while".into(),
        };
        let last = self
            .last_retry_after
            .map(|d| {
                format!(
                    ", the last asking to wait {}",
                    crate::runtime::human_duration(d)
                )
            })
            .unwrap_or_default();
        format!(
            "Graph kept throttling or failing this change {tried} ({} answers of 429 or 503 with Retry-After{last}); it was given up {} after it was staged (retry.give_up_after_seconds)",
            self.throttled,
            crate::runtime::human_duration(give_up_after),
        )
    }
}

/// A ledger entry for a Graph failure.
pub fn graph_entry(
    revision: u64,
    mailbox: &str,
    op: &str,
    outcome: ledger::Outcome,
    reason: &str,
    e: &GraphError,
    attempt: u32,
) -> Entry {
    Entry {
        graph_status: e.status,
        graph_code: Some(e.code.clone()),
        request_id: e.request_id.clone(),
        attempt,
        ..Entry::new(revision, mailbox, op, outcome, reason)
    }
}

/// How a claimed schedule ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Applied, already applied, or dead-lettered: the claim is completed.
    Settled,
    /// Interrupted (Redis or RabbitMQ failed): the claim is released and retried shortly.
    Unsettled,
}

impl Settlement {
    /// Unsettled if either is.
    pub fn worst(self, other: Settlement) -> Settlement {
        match (self, other) {
            (Settlement::Settled, Settlement::Settled) => Settlement::Settled,
            _ => Settlement::Unsettled,
        }
    }
}
