//! A change in flight through the scheduler, and the claim it belongs to.

use std::sync::Arc;

use jiff::Timestamp;

use super::batch::{MailboxKey, Step};
use super::dead::Settlement;
use super::intake::Claimed;
use super::plan::OpKind;
use crate::graph::error::GraphError;
use crate::ledger::{self, Entry};
use crate::store::Member;

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
    /// Attempts of the current request.
    pub attempts: u32,
    pub first_failure: Option<Timestamp>,
    pub last_failure: Option<Timestamp>,
}

impl Work {
    pub fn key(&self) -> MailboxKey {
        (self.company.clone(), self.mailbox.clone())
    }

    pub fn revision(&self) -> u64 {
        self.claimed.event.revision
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
