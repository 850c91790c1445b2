//! A clean removal: deleting exactly the copies this service created in one mailbox.
//!
//! The reverse index (`Copies::schedules_in_mailbox`) names the schedules with a copy there; the
//! mapping gives each copy's event id. A copy whose create was sent but whose answer was never
//! recorded (an intent without an event id) is found by its tag. Deletes go out in `$batch`es of
//! 20 under the mailbox's lease, one batch at a time (Graph runs at most 4 items at once, the
//! same discipline the flush keeps), retried after `Retry-After`. Copies carry no attendees, so
//! deleting them sends no cancellation mail.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use backon::Retryable;

use serde::Serialize;

use super::service::{Admin, AdminError, Progress, ProgressFn};
use crate::graph::client::{Credentials, GraphRequest, GraphResponse, MAX_BATCH};
use crate::graph::error::{ErrorClass, GraphError, MailboxProblem};
use crate::graph::requests::{self, LookupPage};
use crate::store::Member;
use crate::store::{LeaseGuard, MailboxLeases};

/// What removing copies from a mailbox did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CleanupReport {
    /// Schedules with a copy (or a create in progress) recorded in the mailbox.
    pub copies: usize,
    pub deleted: usize,
    /// Already deleted in Outlook (404), or a create that never happened.
    pub already_gone: usize,
    pub failed: Vec<CleanupFailure>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CleanupFailure {
    pub schedule_id: String,
    pub error: String,
}

impl CleanupReport {
    pub(super) fn add(&mut self, o: &CleanupReport) {
        self.copies += o.copies;
        self.deleted += o.deleted;
        self.already_gone += o.already_gone;
        self.failed.extend(o.failed.iter().cloned());
    }
}

const ROUNDS: u32 = 6;

pub(crate) async fn delete_copies(
    admin: &Admin,
    leases: &MailboxLeases,
    lease_wait: Duration,
    company: &str,
    creds: &Credentials,
    mailbox: &str,
    progress: ProgressFn,
) -> Result<CleanupReport, AdminError> {
    let mailbox = crate::tenants::mailbox_key(mailbox);
    // The mailbox's exclusive lease, the one the flush takes: no worker writes there meanwhile.
    let Some(lease) = leases.acquire(company, &mailbox, lease_wait).await? else {
        return Err(AdminError::Unavailable {
            message: format!("a worker kept writing to {mailbox}; try again"),
            retry_after: Some(lease_wait),
        });
    };
    let result = run(admin, &lease, company, creds, &mailbox, progress).await;
    lease.release().await;
    result
}

/// What became of one schedule's copy (or copies) in the mailbox.
enum Fate {
    Deleted,
    Gone,
    Failed(String),
}

/// The mailbox being cleaned, for one company with its credentials, under the mailbox's lease
/// (which paces every batch within the mailbox's request budget, as the flush does).
#[derive(Clone, Copy)]
struct Target<'a> {
    admin: &'a Admin,
    lease: &'a LeaseGuard,
    company: &'a str,
    creds: &'a Credentials,
    mailbox: &'a str,
}

async fn run(
    admin: &Admin,
    lease: &LeaseGuard,
    company: &str,
    creds: &Credentials,
    mailbox: &str,
    progress: ProgressFn,
) -> Result<CleanupReport, AdminError> {
    let at = Target {
        admin,
        lease,
        company,
        creds,
        mailbox,
    };
    let ids = admin.copies.schedules_in_mailbox(company, mailbox).await?;
    let total = ids.len();
    let mut report = CleanupReport {
        copies: total,
        ..CleanupReport::default()
    };
    let mut done = 0;
    progress(Progress { done, total });
    for chunk in ids.chunks(MAX_BATCH) {
        let members: Vec<Member> = chunk
            .iter()
            .map(|s| Member {
                company_id: company.to_string(),
                schedule_id: s.clone(),
            })
            .collect();
        let refs: Vec<&Member> = members.iter().collect();
        let copies = admin.copies.in_mailbox(&refs, mailbox).await?;
        let mut targets: Vec<Vec<String>> = vec![Vec::new(); members.len()];
        let mut fates: Vec<Option<Fate>> = (0..members.len()).map(|_| None).collect();
        let mut lookups: Vec<(usize, Option<String>)> = Vec::new();
        for (i, c) in copies.iter().enumerate() {
            match c.as_ref().and_then(|c| c.event_id.clone()) {
                Some(id) => targets[i].push(id),
                None => lookups.push((i, None)),
            }
        }
        look_up(at, &members, lookups, &mut targets, &mut fates).await;
        delete(at, &targets, &mut fates).await;
        let removals = tally(&mut report, fates, &members);
        admin.copies.write(mailbox, &[], &removals).await?;
        done += members.len();
        progress(Progress { done, total });
    }
    tracing::info!(
        company,
        mailbox,
        copies = report.copies,
        deleted = report.deleted,
        already_gone = report.already_gone,
        failed = report.failed.len(),
        "admin: copies removed from a mailbox"
    );
    Ok(report)
}

/// Creates whose answer was never recorded: look for the copy by its tag, keeping only exact
/// matches (Graph's filter also returns the copies of ids differing in case) and following the
/// pages while a page is full. What is found joins `targets[i]`; a lookup that fails settles
/// `fates[i]`.
async fn look_up(
    at: Target<'_>,
    members: &[Member],
    mut lookups: Vec<(usize, Option<String>)>,
    targets: &mut [Vec<String>],
    fates: &mut [Option<Fate>],
) {
    let Target {
        admin,
        company,
        mailbox,
        ..
    } = at;
    while !lookups.is_empty() {
        let reqs: Vec<GraphRequest> = lookups
            .iter()
            .map(|(i, next)| {
                requests::lookup(
                    i.to_string(),
                    mailbox,
                    company,
                    &members[*i].schedule_id,
                    next.as_deref(),
                )
            })
            .collect();
        let results = batch_retrying(at, reqs).await;
        let mut more = Vec::new();
        for ((i, _), r) in lookups.into_iter().zip(results) {
            match r {
                Ok(resp) => {
                    let page = LookupPage::read(
                        &resp.body,
                        company,
                        &members[i].schedule_id,
                        admin.graph.base_url(),
                    );
                    targets[i].extend(page.exact);
                    if let Some(next) = page.next {
                        more.push((i, Some(next)));
                    }
                }
                Err(e) if mailbox_gone(&e) => fates[i] = Some(Fate::Gone),
                Err(e) => fates[i] = Some(Fate::Failed(e.to_string())),
            }
        }
        lookups = more;
    }
}

/// The deletes of every target whose fate is still open, in `$batch`es of [`MAX_BATCH`]. A
/// schedule with several copies failed if any delete failed, else was deleted if any was.
async fn delete(at: Target<'_>, targets: &[Vec<String>], fates: &mut [Option<Fate>]) {
    let mut reqs = Vec::new();
    let mut owners = Vec::new();
    for (i, ids) in targets.iter().enumerate() {
        if fates[i].is_some() {
            continue;
        }
        for (k, id) in ids.iter().enumerate() {
            reqs.push(requests::delete(format!("{i}-{k}"), at.mailbox, id));
            owners.push(i);
        }
    }
    let mut results = Vec::new();
    let mut pending = reqs;
    while !pending.is_empty() {
        let rest = pending.split_off(pending.len().min(MAX_BATCH));
        results.extend(batch_retrying(at, pending).await);
        pending = rest;
    }
    for (&i, r) in owners.iter().zip(results) {
        let fate = match r {
            Ok(_) => Fate::Deleted,
            Err(e) if e.class == ErrorClass::ItemGone || mailbox_gone(&e) => Fate::Gone,
            Err(e) => Fate::Failed(e.to_string()),
        };
        fates[i] = Some(match (fates[i].take(), fate) {
            (Some(Fate::Failed(m)), _) | (_, Fate::Failed(m)) => Fate::Failed(m),
            (Some(Fate::Deleted), _) | (_, Fate::Deleted) => Fate::Deleted,
            _ => Fate::Gone,
        });
    }
}

/// Counts the fates into the report; returns the schedules whose mapping entry goes (deleted
/// or already gone; a failure keeps its entry).
fn tally<'m>(
    report: &mut CleanupReport,
    fates: Vec<Option<Fate>>,
    members: &'m [Member],
) -> Vec<&'m Member> {
    let mut removals = Vec::new();
    for (i, fate) in fates.into_iter().enumerate() {
        match fate.unwrap_or(Fate::Gone) {
            Fate::Deleted => {
                report.deleted += 1;
                removals.push(&members[i]);
            }
            Fate::Gone => {
                report.already_gone += 1;
                removals.push(&members[i]);
            }
            Fate::Failed(error) => report.failed.push(CleanupFailure {
                schedule_id: members[i].schedule_id.clone(),
                error,
            }),
        }
    }
    removals
}

/// The user or their mailbox no longer exists: its events are gone with it.
fn mailbox_gone(e: &GraphError) -> bool {
    matches!(
        e.class,
        ErrorClass::Mailbox(MailboxProblem::UnknownUser | MailboxProblem::NoMailbox)
    )
}

/// Why a batch round is tried again: some items (or the whole batch) were throttled or
/// unavailable; `wait` is the longest `Retry-After` among them.
struct Busy {
    wait: Option<Duration>,
    example: GraphError,
}

/// Sends ≤ 20 requests as one `$batch`, resending the items (or the whole batch) that were
/// throttled or unavailable after the longest `Retry-After` (else backon's exponential step),
/// up to [`ROUNDS`] times in all. One result per request, in order.
async fn batch_retrying(
    at: Target<'_>,
    reqs: Vec<GraphRequest>,
) -> Vec<Result<GraphResponse, GraphError>> {
    let Target {
        admin,
        lease,
        company,
        creds,
        ..
    } = at;
    let results: Mutex<Vec<Option<Result<GraphResponse, GraphError>>>> =
        Mutex::new((0..reqs.len()).map(|_| None).collect());
    let reqs = &reqs;
    let results_ref = &results;
    let round = || async move {
        let pending: Vec<usize> = {
            let r = results_ref.lock().unwrap_or_else(PoisonError::into_inner);
            (0..reqs.len()).filter(|&i| r[i].is_none()).collect()
        };
        if pending.is_empty() {
            return Ok(());
        }
        let batch: Vec<GraphRequest> = pending.iter().map(|&i| reqs[i].clone()).collect();
        lease.pace(batch.len()).await;
        match admin.graph.batch(company, creds, &batch).await {
            Ok(items) => {
                let mut busy: Option<Busy> = None;
                let mut r = results_ref.lock().unwrap_or_else(PoisonError::into_inner);
                for (&i, item) in pending.iter().zip(items) {
                    match item {
                        Err(e) if e.is_retryable() => {
                            let wait = e.wait_hint().max(busy.as_ref().and_then(|b| b.wait));
                            busy = Some(Busy { wait, example: e });
                        }
                        other => r[i] = Some(other),
                    }
                }
                busy.map_or(Ok(()), Err)
            }
            Err(e) if e.is_retryable() => Err(Busy {
                wait: e.wait_hint(),
                example: e,
            }),
            Err(e) => {
                let mut r = results_ref.lock().unwrap_or_else(PoisonError::into_inner);
                for &i in &pending {
                    r[i] = Some(Err(e.clone()));
                }
                Ok(())
            }
        }
    };
    let cap = Duration::from_secs(admin.cfg.retry.max_retry_after_seconds);
    let outcome = round
        .retry(admin.backoff().with_max_times(ROUNDS as usize - 1))
        .adjust(|b: &Busy, step| step.map(|d| b.wait.map(|w| w.min(cap)).unwrap_or(d)))
        .notify(|b: &Busy, wait| admin.waiting(company, &b.example, wait))
        .await;
    let last = outcome.err().map(|b| b.example);
    let mut out = Vec::with_capacity(reqs.len());
    for r in results.into_inner().unwrap_or_else(PoisonError::into_inner) {
        out.push(match r {
            Some(r) => r,
            None => Err(last.clone().unwrap_or_else(|| {
                GraphError::local(
                    "RetriesExhausted",
                    "Graph kept throttling",
                    ErrorClass::Retryable { after: None },
                )
            })),
        });
    }
    out
}
