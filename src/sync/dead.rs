//! A change given up on becomes a dead letter: the original event, the reason, and Graph's
//! status, code, message and request-id, published with confirms to the dead-letter exchange.

use jiff::Timestamp;
use tracing::warn;

use super::Shared;
use super::engine::Settlement;
use super::intake::Claimed;
use crate::amqp;
use crate::deadletter::DeadLetter;
use crate::graph::error::{ErrorClass, GraphError};
use crate::metrics::Metrics;

/// Publishes the dead letter of a change; `Unsettled` if the publish failed (the schedule is
/// then retried, nothing is lost).
pub async fn publish(
    s: &Shared,
    claimed: &Claimed,
    mailbox: &str,
    e: &GraphError,
    reason: &'static str,
    attempts: u32,
    (first_failure, last_failure): (Option<Timestamp>, Option<Timestamp>),
) -> Settlement {
    let ev = &claimed.event;
    let company = &ev.company_id;
    let dl = DeadLetter {
        stage: "flush",
        reason: reason.to_string(),
        error: e.to_string(),
        company_id: Some(company.clone()),
        schedule_id: Some(ev.schedule_id.clone()),
        revision: Some(ev.revision),
        mailbox: Some(mailbox.to_string()),
        graph_status: e.status,
        graph_code: Some(e.code.clone()),
        graph_message: Some(e.message.clone()),
        graph_request_id: e.request_id.clone(),
        attempts,
        first_failure,
        last_failure,
    };
    let key = ev.event_type.routing_key();
    let props = amqp::event_properties(&ev.event_id, key);
    let exchange = &s.cfg.amqp.dead_letter_exchange;
    let published = match s.publisher().await {
        Ok(p) => {
            dl.publish(&p, exchange, key, &props, &claimed.staged.raw)
                .await
        }
        Err(e) => Err(e),
    };
    match published {
        Ok(()) => {
            warn!(company = %company, schedule = %ev.schedule_id, mailbox, revision = ev.revision, reason, status = ?e.status, code = %e.code, request_id = ?e.request_id, "flush: change dead-lettered");
            let m = &s.metrics;
            m.dead_letters
                .get_or_create(&vec![("stage", "flush".into()), ("reason", reason.into())])
                .inc();
            m.company_failures
                .get_or_create(&vec![
                    ("company", company.clone()),
                    ("kind", failure_kind(&e.class).into()),
                ])
                .inc();
            Settlement::Settled
        }
        Err(err) => {
            warn!(company = %company, schedule = %ev.schedule_id, mailbox, error = %err, "flush: dead-letter publish failed; the schedule will be retried");
            Settlement::Unsettled
        }
    }
}

/// The `kind` label of `outlook_sync_company_failures_total`.
fn failure_kind(class: &ErrorClass) -> &'static str {
    match class {
        ErrorClass::Credentials(_) => "credentials",
        ErrorClass::Mailbox(_) => "mailbox",
        ErrorClass::Retryable { .. } | ErrorClass::RefreshToken => "retries_exhausted",
        _ => "rejected",
    }
}

impl Shared {
    /// A copy was written: counted, its sync latency observed, and a debug line for tracing a
    /// schedule's sync.
    pub fn written(&self, op: &'static str, ev: &crate::event::ScheduleEvent, mailbox: &str) {
        self.metrics
            .graph_writes
            .get_or_create(&Metrics::label("op", op))
            .inc();
        let latency = Timestamp::now().as_millisecond() - ev.occurred_at.as_millisecond();
        self.metrics
            .sync_latency_seconds
            .observe(latency.max(0) as f64 / 1000.0);
        tracing::debug!(
            company = %ev.company_id,
            schedule = %ev.schedule_id,
            mailbox,
            revision = ev.revision,
            op,
            latency_ms = latency.max(0),
            "flush: copy written"
        );
    }

    /// A change not synced by a product rule (counted, in the ledger; never an error).
    pub fn skipped(&self, report: &mut super::FlushReport, reason: &str) {
        report.skipped += 1;
        self.metrics
            .events_skipped
            .get_or_create(&Metrics::label("reason", reason))
            .inc();
    }
}
