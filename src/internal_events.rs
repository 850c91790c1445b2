//! What the service tells its operators about itself: each happening is one named event that
//! logs and counts together (as vector's `internal_events` do), so a log line and its metric can
//! never drift apart. Stages emit events; they never touch a metric or write a log line of their
//! own for these happenings.

use std::time::Duration;

use jiff::Timestamp;
use tracing::{debug, warn};

use crate::event::ScheduleEvent;
use crate::graph::error::{ErrorClass, GraphError};
use crate::metrics::Metrics;

/// A happening worth a log line and a count.
pub trait InternalEvent {
    fn emit(self, metrics: &Metrics);
}

/// Graph answered a request (a `$batch` item) with this status (0: no answer).
pub struct GraphAnswered {
    pub status: u16,
    /// The answer was a 429.
    pub throttled: bool,
}

impl InternalEvent for GraphAnswered {
    fn emit(self, m: &Metrics) {
        m.graph_requests
            .get_or_create(&Metrics::label("status", self.status.to_string()))
            .inc();
        if self.throttled {
            m.graph_throttled.inc();
        }
    }
}

/// A copy was written to Outlook.
pub struct CopyWritten<'a> {
    pub op: &'static str,
    pub event: &'a ScheduleEvent,
    pub mailbox: &'a str,
}

impl InternalEvent for CopyWritten<'_> {
    fn emit(self, m: &Metrics) {
        m.graph_writes
            .get_or_create(&Metrics::label("op", self.op))
            .inc();
        let ev = self.event;
        let latency = Timestamp::now().as_millisecond() - ev.occurred_at.as_millisecond();
        m.sync_latency_seconds
            .observe(latency.max(0) as f64 / 1000.0);
        // One line per write (debug): what changed where, for tracing a schedule's sync.
        debug!(
            company = %ev.company_id,
            schedule = %ev.schedule_id,
            mailbox = self.mailbox,
            revision = ev.revision,
            op = self.op,
            latency_ms = latency.max(0),
            "flush: copy written"
        );
    }
}

/// A change not synced by a product rule (in the ledger too; never an error).
pub struct ChangeSkipped<'a> {
    pub reason: &'a str,
}

impl InternalEvent for ChangeSkipped<'_> {
    fn emit(self, m: &Metrics) {
        m.events_skipped
            .get_or_create(&Metrics::label("reason", self.reason))
            .inc();
    }
}

/// A schedule given back because the directory cannot answer for its company now (not loaded,
/// PostgreSQL unreachable, empty, or a company known and lost): retried, never skipped.
pub struct DirectoryUnanswered<'a> {
    pub company: &'a str,
    pub reason: &'static str,
}

impl InternalEvent for DirectoryUnanswered<'_> {
    fn emit(self, m: &Metrics) {
        m.events_deferred
            .get_or_create(&Metrics::label("reason", self.reason))
            .inc();
        warn!(
            company = self.company,
            reason = self.reason,
            "flush: the directory cannot answer for this company now; the schedule is retried"
        );
    }
}

/// A mailbox waits before it is written again (`Retry-After`, else backoff).
pub struct MailboxWaits<'a> {
    pub company: &'a str,
    pub mailbox: &'a str,
    pub wait: Duration,
}

impl InternalEvent for MailboxWaits<'_> {
    fn emit(self, m: &Metrics) {
        m.retry_after_wait_seconds.inc_by(self.wait.as_secs_f64());
        debug!(
            company = self.company,
            mailbox = self.mailbox,
            wait_ms = self.wait.as_millis() as u64,
            "flush: mailbox waits before retrying"
        );
    }
}

/// A change the flush gave up on became a dead letter.
pub struct ChangeDeadLettered<'a> {
    pub event: &'a ScheduleEvent,
    pub mailbox: &'a str,
    pub reason: &'a str,
    pub error: &'a GraphError,
}

impl InternalEvent for ChangeDeadLettered<'_> {
    fn emit(self, m: &Metrics) {
        let (ev, e) = (self.event, self.error);
        warn!(company = %ev.company_id, schedule = %ev.schedule_id, mailbox = self.mailbox, revision = ev.revision, reason = self.reason, status = ?e.status, code = %e.code, request_id = ?e.request_id, "flush: change dead-lettered");
        m.dead_letters
            .get_or_create(&vec![
                ("stage", "flush".into()),
                ("reason", self.reason.into()),
            ])
            .inc();
        let kind = match e.class {
            ErrorClass::Credentials(_) => "credentials",
            ErrorClass::Mailbox(_) => "mailbox",
            ErrorClass::Retryable { .. } | ErrorClass::RefreshToken => "retries_exhausted",
            _ => "rejected",
        };
        m.company_failures
            .get_or_create(&vec![
                ("company", ev.company_id.clone()),
                ("kind", kind.into()),
            ])
            .inc();
    }
}

/// An invalid message became a dead letter at ingest.
pub struct InvalidEventDeadLettered<'a> {
    pub error: &'a crate::event::ContractError,
    pub message_id: Option<&'a str>,
}

impl InternalEvent for InvalidEventDeadLettered<'_> {
    fn emit(self, m: &Metrics) {
        let e = self.error;
        let reason = e.reason.code();
        warn!(reason, field = %e.field, problem = %e.problem, message_id = ?self.message_id, "ingest: invalid event dead-lettered");
        m.events_invalid
            .get_or_create(&Metrics::label("reason", reason))
            .inc();
        m.dead_letters
            .get_or_create(&vec![("stage", "ingest".into()), ("reason", reason.into())])
            .inc();
    }
}

/// The ingest consumer (or its connection) ended; it is rebuilt after `retry_in`.
pub struct ConsumerLost<'a> {
    pub error: &'a dyn std::fmt::Display,
    /// The broker's address, password hidden.
    pub broker: &'a str,
    /// A consumer was attached when it failed (else it never got that far).
    pub was_consuming: bool,
    pub retry_in: Duration,
}

impl InternalEvent for ConsumerLost<'_> {
    fn emit(self, m: &Metrics) {
        m.ingest_reconnects.inc();
        let retry_in_ms = self.retry_in.as_millis() as u64;
        if self.was_consuming {
            warn!(error = %self.error, broker = self.broker, retry_in_ms, "ingest: the RabbitMQ consumer was lost; reconnecting");
        } else {
            warn!(error = %self.error, broker = self.broker, retry_in_ms, "ingest: RabbitMQ cannot be reached or refused to consume; trying again");
        }
    }
}

/// What staging one batch came to.
pub struct BatchStaged {
    pub staged: usize,
    pub duplicates: usize,
    pub stale: usize,
}

impl InternalEvent for BatchStaged {
    fn emit(self, m: &Metrics) {
        m.events_staged.inc_by(self.staged as u64);
        deduplicated(m, "ingest", self.duplicates as u64, self.stale as u64);
    }
}

fn deduplicated(m: &Metrics, at: &str, duplicates: u64, stale: u64) {
    for (kind, n) in [("duplicate", duplicates), ("stale", stale)] {
        if n > 0 {
            m.events_deduplicated
                .get_or_create(&crate::metrics::deduplicated_labels(kind, at))
                .inc_by(n);
        }
    }
}

/// The flush (or the repair, reading under a claim) consolidated schedules and dropped the
/// appended events that were not news.
pub struct StagedConsolidated {
    pub dropped: crate::window::Dropped,
}

impl StagedConsolidated {
    /// What the consolidation of `staged` dropped, summed.
    pub fn of<'a>(
        staged: impl IntoIterator<Item = &'a Option<crate::window::StagedSchedule>>,
    ) -> Self {
        let mut dropped = crate::window::Dropped::default();
        for s in staged.into_iter().flatten() {
            dropped.duplicates += s.dropped.duplicates;
            dropped.stale += s.dropped.stale;
        }
        StagedConsolidated { dropped }
    }
}

impl InternalEvent for StagedConsolidated {
    fn emit(self, m: &Metrics) {
        deduplicated(m, "flush", self.dropped.duplicates, self.dropped.stale);
    }
}

/// An operator's replay of a dead letter was staged (`restaged`, `newest`, `duplicate`,
/// `stale`).
pub struct ReplayStaged {
    pub outcome: &'static str,
}

impl InternalEvent for ReplayStaged {
    fn emit(self, m: &Metrics) {
        m.dead_letters_replayed
            .get_or_create(&Metrics::label("outcome", self.outcome))
            .inc();
    }
}
