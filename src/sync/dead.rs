//! A change given up on becomes a dead letter: the original event, the reason, and Graph's
//! status, code, message and request-id, published with confirms to the dead-letter exchange.

use jiff::Timestamp;
use tracing::warn;

use super::Shared;
use super::batch::Step;
use super::intake::Claimed;
use super::work::{Settlement, Work, graph_entry};
use crate::amqp;
use crate::deadletter::DeadLetter;
use crate::graph::error::{ErrorClass, GraphError};
use crate::internal_events::{ChangeDeadLettered, InternalEvent};
use crate::ledger::{self, Entry};

/// Publishes the dead letter of a change; `Unsettled` if the publish failed (the schedule is
/// then retried, nothing is lost).
pub async fn publish(
    s: &Shared,
    claimed: &Claimed,
    mailbox: &str,
    e: &GraphError,
    (reason, why): (&'static str, Option<&str>),
    attempts: u32,
    (first_failure, last_failure): (Option<Timestamp>, Option<Timestamp>),
) -> Settlement {
    let ev = &claimed.event;
    let company = &ev.company_id;
    let dl = DeadLetter {
        stage: "flush",
        reason: reason.to_string(),
        // Graph's last words, and why the service stopped trying where that is more than them.
        error: match why {
            Some(why) => format!("{why}; the last answer: {e}"),
            None => e.to_string(),
        },
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
            ChangeDeadLettered {
                event: ev,
                mailbox,
                reason,
                error: e,
            }
            .emit(&s.metrics);
            Settlement::Settled
        }
        Err(err) => {
            warn!(company = %company, schedule = %ev.schedule_id, mailbox, error = %err, "flush: dead-letter publish failed; the schedule will be retried");
            Settlement::Unsettled
        }
    }
}

/// Gives up on a change: its dead letter (with Graph's words, and why the service stopped
/// trying when it kept being refused past `retry.give_up_after_seconds`), the ledger entry that
/// says so, and a mailbox problem flips its user to auth_failed.
pub async fn give_up(
    s: &Shared,
    w: &Work,
    e: &GraphError,
    reason: &'static str,
) -> (Settlement, Option<Entry>) {
    let explained = (reason == super::outcome::RETRY_TIME_EXHAUSTED)
        .then(|| w.gave_up_after(s.cfg.give_up_after()));
    let failures = (w.first_failure, w.last_failure);
    let settlement = publish(
        s,
        &w.claimed,
        &w.mailbox,
        e,
        (reason, explained.as_deref()),
        w.attempts,
        failures,
    )
    .await;
    if matches!(e.class, ErrorClass::Mailbox(_)) {
        let _ = s
            .directory
            .record_sync(&w.company, &w.user, Err((reason, &e.message)))
            .await;
    }
    let Step::Ready(request) = &w.step else {
        return (settlement, None);
    };
    let (kind, why) = match settlement {
        Settlement::Settled => (ledger::Outcome::DeadLettered, reason),
        Settlement::Unsettled => (ledger::Outcome::Retrying, "dead_letter_publish_failed"),
    };
    let mut entry = graph_entry(
        w.revision(),
        &w.mailbox,
        request.op(),
        kind,
        why,
        e,
        w.attempts,
    );
    if let (ledger::Outcome::DeadLettered, Some(words)) = (kind, explained) {
        entry.words = words;
    }
    (settlement, Some(entry))
}
