//! Apply: the flush's writes to Graph for one company, scheduled per mailbox.
//!
//! - A mailbox is leased (exclusively, across all workers) only while this worker has something
//!   to send to it, and released when its work is done, so workers interleave on shared mailboxes
//!   instead of blocking each other for a whole pass. A mailbox that stays busy for
//!   `LEASE_WAIT` is deferred to a later pass.
//! - Under the lease, the mailbox's copies are re-read before anything is planned, so a copy that
//!   another worker moved to a newer revision is left alone (no regression).
//! - At most one `$batch` is in flight per mailbox. Graph runs at most 4 items of a batch at
//!   once, so no mailbox ever sees more than 4 requests in flight. A mailbox with 20 or more
//!   pending writes gets batches of its own (4 in flight, the most Graph allows); smaller
//!   remainders of several mailboxes share a batch, so the request count stays near
//!   ⌈writes / 20⌉.
//! - A retryable failure delays only its mailbox (`Retry-After`, else exponential backoff with
//!   jitter); other mailboxes go on.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use jiff::Timestamp;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::amqp;
use crate::deadletter::DeadLetter;
use crate::event::ScheduleEvent;
use crate::flush::{AbortOnDrop, Claimed, Copy, FlushReport, Flusher, OpKind, Outcome};
use crate::graph::client::{GraphRequest, GraphResponse, Method, path_segment};
use crate::graph::error::{ErrorClass, GraphError};
use crate::graph::mapping::{self, MappingOptions};
use crate::ledger::{self, Entry};
use crate::metrics::{GaugeGuard, Metrics};
use crate::tenants::Company;
use crate::window::Member;

/// How long a mailbox may stay leased by another worker before its changes are deferred.
const LEASE_WAIT: Duration = Duration::from_secs(2);

/// One change to one mailbox.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub member_idx: usize,
    pub mailbox: String,
    pub user: String,
    pub kind: OpKind,
}

/// The step a job is at.
#[derive(Debug, Clone)]
enum Step {
    Lookup { then_create_tx: Option<String> },
    LookupForDelete,
    Create(Option<String>),
    Update(String),
    Delete(String),
}

impl Step {
    fn op(&self) -> &'static str {
        match self {
            Step::Lookup { .. } | Step::LookupForDelete => "lookup",
            Step::Create(_) => "create",
            Step::Update(_) => "update",
            Step::Delete(_) => "delete",
        }
    }
}

struct Work {
    job: Job,
    step: Option<Step>,
    attempts: u32,
    done: Option<Outcome>,
    error: Option<GraphError>,
    reason: &'static str,
    first_failure: Option<Timestamp>,
    last_failure: Option<Timestamp>,
}

impl Work {
    fn finished(&self) -> bool {
        self.done.is_some()
    }
}

/// A mailbox's place in the schedule.
struct Mailbox {
    jobs: Vec<usize>,
    pending: VecDeque<usize>,
    lease: Option<String>,
    prepared: bool,
    busy: bool,
    not_before: Instant,
    next_lease_try: Instant,
    waiting_since: Option<Instant>,
    backoff: backon::ExponentialBackoff,
}

impl Mailbox {
    fn open(&self, work: &[Work]) -> bool {
        self.jobs.iter().any(|&i| !work[i].finished())
    }
}

type BatchResult = (Vec<usize>, Result<Vec<Result<GraphResponse, GraphError>>, GraphError>);

/// What applying one company's jobs came to.
pub(crate) struct Applied {
    pub report: FlushReport,
    pub outcomes: Vec<(usize, Outcome)>,
    pub notes: Vec<(Member, Entry)>,
}

impl Flusher {
    pub(crate) async fn apply_company(
        &self,
        company: &Company,
        jobs: Vec<Job>,
        claimed: &[Claimed],
        batches: Arc<tokio::sync::Semaphore>,
    ) -> Applied {
        let mut report = FlushReport::default();
        let mut notes = Vec::new();
        let creds = company
            .credentials
            .as_ref()
            .expect("sync_allowed checked credentials")
            .credentials();
        let opts = MappingOptions {
            category: &self.cfg.graph.category,
            default_zone: &self.default_zone,
        };
        let batch_size = self.cfg.graph.batch_size;
        let max_attempts = self.cfg.retry.max_attempts;
        let cap = Duration::from_secs(self.cfg.retry.max_retry_after_seconds);

        let mut work: Vec<Work> = jobs
            .into_iter()
            .map(|job| Work {
                job,
                step: None,
                attempts: 0,
                done: None,
                error: None,
                reason: "",
                first_failure: None,
                last_failure: None,
            })
            .collect();
        let now = Instant::now();
        let mut boxes: BTreeMap<String, Mailbox> = BTreeMap::new();
        for (i, w) in work.iter().enumerate() {
            boxes
                .entry(w.job.mailbox.clone())
                .or_insert_with(|| Mailbox {
                    jobs: Vec::new(),
                    pending: VecDeque::new(),
                    lease: None,
                    prepared: false,
                    busy: false,
                    not_before: now,
                    next_lease_try: now,
                    waiting_since: None,
                    backoff: self.backoff_schedule(),
                })
                .jobs
                .push(i);
        }
        // Renew every lease held, until this function returns.
        let held = Arc::new(std::sync::Mutex::new(BTreeMap::<String, String>::new()));
        let _renewer = AbortOnDrop(self.leases.renew_all(company.id.clone(), held.clone()));

        let mut inflight: FuturesUnordered<
            std::pin::Pin<Box<dyn std::future::Future<Output = BatchResult> + Send + '_>>,
        > = FuturesUnordered::new();
        let mut interrupted: Option<String> = None;

        loop {
            let now = Instant::now();
            // 1. Lease the mailboxes that have work and are not held, as many as can be used.
            let free_slots = batches.available_permits().max(1);
            let candidates: Vec<String> = boxes
                .iter()
                .filter(|(_, b)| b.lease.is_none() && b.next_lease_try <= now && b.open(&work))
                .map(|(m, _)| m.clone())
                .take(free_slots * batch_size)
                .collect();
            if !candidates.is_empty() && interrupted.is_none() {
                match self.leases.try_acquire_many(&company.id, &candidates).await {
                    Ok(tokens) => {
                        for (m, token) in candidates.iter().zip(tokens) {
                            let b = boxes.get_mut(m).expect("candidate");
                            match token {
                                Some(t) => {
                                    self.metrics.graph_mailboxes_leased.inc();
                                    held.lock().expect("lease map").insert(m.clone(), t.clone());
                                    b.lease = Some(t);
                                    b.waiting_since = None;
                                }
                                None => {
                                    let since = *b.waiting_since.get_or_insert(now);
                                    if now.duration_since(since) >= LEASE_WAIT {
                                        for &i in &b.jobs {
                                            if work[i].done.is_none() {
                                                work[i].done = Some(Outcome::Deferred);
                                                report.deferred += 1;
                                                notes.push(self.note(
                                                    claimed,
                                                    &work[i],
                                                    "plan",
                                                    ledger::Outcome::Deferred,
                                                    "mailbox_busy",
                                                ));
                                            }
                                        }
                                    } else {
                                        let jitter = rand::random::<u64>() % 100;
                                        b.next_lease_try = now + Duration::from_millis(100 + jitter);
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => interrupted = Some(e.to_string()),
                }
            }

            // 2. Plan the newly leased mailboxes from their copies, re-read under the lease.
            let fresh: Vec<String> = boxes
                .iter()
                .filter(|(_, b)| b.lease.is_some() && !b.prepared)
                .map(|(m, _)| m.clone())
                .collect();
            if !fresh.is_empty() && interrupted.is_none() {
                let pairs: Vec<(&Member, &str)> = fresh
                    .iter()
                    .flat_map(|m| {
                        boxes[m].jobs.iter().map(|&i| {
                            (&claimed[work[i].job.member_idx].member, m.as_str())
                        })
                    })
                    .collect();
                match self.copies.pairs(&pairs).await {
                    Ok(current) => {
                        let mut k = 0;
                        for m in &fresh {
                            let b = boxes.get_mut(m).expect("fresh");
                            b.prepared = true;
                            for &i in &b.jobs {
                                let copy = current[k].clone();
                                k += 1;
                                let c = &claimed[work[i].job.member_idx];
                                match first_step(&work[i].job, c, copy) {
                                    Some(step) => {
                                        work[i].step = Some(step);
                                        b.pending.push_back(i);
                                    }
                                    None => {
                                        if work[i].done.is_none() {
                                            work[i].done = Some(Outcome::Settled);
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => interrupted = Some(e.to_string()),
                }
            }

            // 3. Record the intent (transactionId) of every create about to be sent.
            if interrupted.is_none()
                && let Err(e) = self.record_intents(&mut work, &boxes, claimed).await
            {
                interrupted = Some(e.to_string());
            }

            // 4. Form batches: full single-mailbox batches, then small remainders packed together,
            //    as long as this worker has batch slots free.
            while interrupted.is_none() {
                let Ok(permit) = batches.clone().try_acquire_owned() else {
                    break;
                };
                let Some(items) = next_batch(&mut boxes, batch_size) else {
                    break;
                };
                let reqs: Vec<GraphRequest> = items
                    .iter()
                    .map(|&i| {
                        let w = &work[i];
                        let ev = claimed[w.job.member_idx].event.as_ref().expect("event");
                        request(i, w.step.as_ref().expect("planned"), ev, &w.job.mailbox, &opts)
                    })
                    .collect();
                // Graph runs at most 4 items of a batch at once: that is what is in flight, overall
                // and per mailbox.
                let mut per_mailbox: BTreeMap<&str, usize> = BTreeMap::new();
                for &i in &items {
                    *per_mailbox.entry(work[i].job.mailbox.as_str()).or_default() += 1;
                }
                for n in per_mailbox.values() {
                    self.metrics
                        .graph_mailbox_requests_in_flight
                        .observe((*n).min(4) as f64);
                }
                let in_flight = GaugeGuard::new(
                    &self.metrics.graph_requests_in_flight,
                    items.len().min(4) as i64,
                );
                let graph = self.graph.clone();
                let (company_id, creds) = (company.id.clone(), creds.clone());
                inflight.push(Box::pin(async move {
                    let res = graph.batch(&company_id, &creds, &reqs).await;
                    drop((permit, in_flight));
                    (items, res)
                }));
            }

            // 5. Wait for a batch to finish, or for the next mailbox to become ready.
            if inflight.is_empty() {
                let open = boxes.values().any(|b| b.open(&work));
                if !open || interrupted.is_some() {
                    break;
                }
                let wake = boxes
                    .values()
                    .filter(|b| b.open(&work))
                    .map(|b| if b.lease.is_none() { b.next_lease_try } else { b.not_before })
                    .min()
                    .unwrap_or_else(Instant::now)
                    .max(Instant::now() + Duration::from_millis(5));
                tokio::time::sleep_until(wake).await;
                continue;
            }
            let (items, res) = tokio::select! {
                Some(done) = inflight.next() => done,
                _ = tokio::time::sleep(Duration::from_millis(100)), if boxes.values().any(|b| b.lease.is_none() && b.open(&work)) => continue,
            };
            let results: Vec<Result<GraphResponse, GraphError>> = match res {
                Ok(r) => r,
                Err(e) => {
                    let mut all = Vec::with_capacity(items.len());
                    for _ in &items {
                        all.push(Err(e.clone()));
                    }
                    all
                }
            };
            let mut writes: Vec<(String, Member, Option<Copy>)> = Vec::new();
            let mut waits: BTreeMap<String, Option<Duration>> = BTreeMap::new();
            for (&i, res) in items.iter().zip(results) {
                let mailbox = work[i].job.mailbox.clone();
                let member = claimed[work[i].job.member_idx].member.clone();
                let ev = claimed[work[i].job.member_idx].event.as_ref().expect("event");
                let w = &mut work[i];
                w.attempts += 1;
                let status = match &res {
                    Ok(r) => r.status,
                    Err(e) => e.status.unwrap_or(0),
                };
                self.metrics
                    .graph_requests
                    .get_or_create(&Metrics::label("status", status.to_string()))
                    .inc();
                let step = w.step.clone().expect("planned");
                match (res, step) {
                    (Ok(resp), Step::Lookup { then_create_tx }) => {
                        report.lookups += 1;
                        w.step = Some(match first_id(&resp.body) {
                            Some(id) => Step::Update(id),
                            None => Step::Create(then_create_tx),
                        });
                        w.attempts = 0;
                        requeue(&mut boxes, &mailbox, i);
                    }
                    (Ok(resp), Step::LookupForDelete) => {
                        report.lookups += 1;
                        w.attempts = 0;
                        match first_id(&resp.body) {
                            Some(id) => {
                                w.step = Some(Step::Delete(id));
                                requeue(&mut boxes, &mailbox, i);
                            }
                            None => {
                                writes.push((mailbox.clone(), member.clone(), None));
                                w.done = Some(Outcome::Settled);
                                notes.push((member, applied(ev, &mailbox, "lookup", "already_gone")));
                            }
                        }
                    }
                    (Ok(resp), Step::Create(tx)) => {
                        let id = resp.body.get("id").and_then(|v| v.as_str()).map(str::to_string);
                        writes.push((
                            mailbox.clone(),
                            member.clone(),
                            Some(Copy {
                                user: w.job.user.clone(),
                                event_id: id,
                                rev: ev.revision,
                                tx,
                            }),
                        ));
                        report.creates += 1;
                        self.written("create", ev);
                        w.done = Some(Outcome::Settled);
                        notes.push((member, applied(ev, &mailbox, "create", "created")));
                    }
                    (Ok(_), Step::Update(id)) => {
                        writes.push((
                            mailbox.clone(),
                            member.clone(),
                            Some(Copy {
                                user: w.job.user.clone(),
                                event_id: Some(id),
                                rev: ev.revision,
                                tx: None,
                            }),
                        ));
                        report.updates += 1;
                        self.written("update", ev);
                        w.done = Some(Outcome::Settled);
                        notes.push((member, applied(ev, &mailbox, "update", "updated")));
                    }
                    (Ok(_), Step::Delete(_)) => {
                        writes.push((mailbox.clone(), member.clone(), None));
                        report.deletes += 1;
                        self.written("delete", ev);
                        w.done = Some(Outcome::Settled);
                        notes.push((member, applied(ev, &mailbox, "delete", "deleted")));
                    }
                    (Err(e), step) => {
                        w.first_failure.get_or_insert_with(Timestamp::now);
                        w.last_failure = Some(Timestamp::now());
                        match (&e.class, &step) {
                            (ErrorClass::ItemGone, Step::Delete(_)) => {
                                writes.push((mailbox.clone(), member.clone(), None));
                                w.done = Some(Outcome::Settled);
                                notes.push((member, applied(ev, &mailbox, "delete", "already_gone")));
                            }
                            (ErrorClass::ItemGone, Step::Update(_)) => {
                                // The copy was deleted in Outlook: create it again.
                                w.step = Some(Step::Create(None));
                                w.attempts = 0;
                                requeue(&mut boxes, &mailbox, i);
                            }
                            (ErrorClass::Retryable { .. } | ErrorClass::RefreshToken, _)
                                if w.attempts < max_attempts =>
                            {
                                if matches!(e.class, ErrorClass::RefreshToken) {
                                    self.graph.forget_token(&company.id);
                                }
                                if e.status == Some(429) {
                                    self.metrics.graph_throttled.inc();
                                }
                                let slot = waits.entry(mailbox.clone()).or_insert(None);
                                if let Some(a) = e.retry_after {
                                    *slot = Some(slot.map_or(a, |s| s.max(a)));
                                }
                                notes.push((
                                    member,
                                    graph_entry(
                                        ev.revision,
                                        &mailbox,
                                        &step,
                                        ledger::Outcome::Retrying,
                                        "throttled_or_unavailable",
                                        &e,
                                        w.attempts,
                                    ),
                                ));
                                requeue(&mut boxes, &mailbox, i);
                            }
                            (ErrorClass::Retryable { .. } | ErrorClass::RefreshToken, _) => {
                                if e.status == Some(429) {
                                    self.metrics.graph_throttled.inc();
                                }
                                w.reason = "retries_exhausted";
                                w.error = Some(e);
                            }
                            (ErrorClass::Mailbox(p), _) => {
                                w.reason = p.code();
                                w.error = Some(e);
                            }
                            (ErrorClass::Credentials(p), _) => {
                                w.reason = p.code();
                                w.error = Some(e);
                            }
                            _ => {
                                w.reason = "graph_rejected";
                                w.error = Some(e);
                            }
                        }
                    }
                }
            }
            if let Err(e) = self.copies.write_many(&writes).await {
                interrupted = Some(e.to_string());
            }
            // Dead-letter what failed for good, with Graph's words.
            for &i in &items {
                if work[i].done.is_some() || work[i].error.is_none() {
                    continue;
                }
                let c = &claimed[work[i].job.member_idx];
                let outcome = self.dead_letter(company, &work[i], c).await;
                let (kind, reason) = if outcome == Outcome::Settled {
                    report.dead_letters += 1;
                    (ledger::Outcome::DeadLettered, work[i].reason)
                } else {
                    (ledger::Outcome::Retrying, "dead_letter_publish_failed")
                };
                let ev = c.event.as_ref().expect("event");
                let w = &work[i];
                notes.push((
                    c.member.clone(),
                    graph_entry(
                        ev.revision,
                        &w.job.mailbox,
                        w.step.as_ref().expect("planned"),
                        kind,
                        reason,
                        w.error.as_ref().expect("error"),
                        w.attempts,
                    ),
                ));
                work[i].done = Some(outcome);
            }
            // Free the mailboxes of this batch; delay the ones that must wait; release the done.
            let touched: HashSet<String> = items.iter().map(|&i| work[i].job.mailbox.clone()).collect();
            let mut release = Vec::new();
            for m in touched {
                let b = boxes.get_mut(&m).expect("touched");
                b.busy = false;
                if let Some(wait) = waits.get(&m) {
                    // Honour Retry-After (never retry sooner); else backoff with jitter.
                    let d = wait
                        .map(|d| d.min(cap))
                        .unwrap_or_else(|| b.backoff.next().unwrap_or(cap));
                    self.metrics.retry_after_wait_seconds.inc_by(d.as_secs_f64());
                    debug!(company = %company.id, mailbox = %m, wait_ms = d.as_millis() as u64, "apply: mailbox waits before retrying");
                    b.not_before = Instant::now() + d;
                }
                if !b.open(&work)
                    && let Some(t) = b.lease.take()
                {
                    held.lock().expect("lease map").remove(&m);
                    self.metrics.graph_mailboxes_leased.dec();
                    release.push((m.clone(), t));
                }
            }
            self.leases.release_many(&company.id, &release).await;
        }

        // Whatever is left (an interruption) is retried in a later pass.
        while let Some((items, _)) = inflight.next().await {
            let _ = items;
        }
        if let Some(why) = &interrupted {
            warn!(company = %company.id, error = %why, "apply: interrupted; the schedules are retried");
        }
        let leftover: Vec<(String, String)> = boxes
            .iter_mut()
            .filter_map(|(m, b)| b.lease.take().map(|t| (m.clone(), t)))
            .collect();
        self.metrics
            .graph_mailboxes_leased
            .dec_by(leftover.len() as i64);
        self.leases.release_many(&company.id, &leftover).await;

        // Feedback to the directory: a success records the sync, a mailbox problem flips the user.
        let mut users_ok: HashSet<&str> = HashSet::new();
        for w in &work {
            match (&w.error, w.done) {
                (None, Some(Outcome::Settled)) if w.step.is_some() => {
                    users_ok.insert(&w.job.user);
                }
                (Some(e), _) if matches!(e.class, ErrorClass::Mailbox(_)) => {
                    let _ = self
                        .directory
                        .record_sync(&company.id, &w.job.user, Err((w.reason, &e.message)))
                        .await;
                }
                _ => {}
            }
        }
        for u in users_ok {
            let _ = self.directory.record_sync(&company.id, u, Ok(())).await;
        }
        let outcomes = work
            .iter()
            .map(|w| (w.job.member_idx, w.done.unwrap_or(Outcome::Unsettled)))
            .collect();
        Applied {
            report,
            outcomes,
            notes,
        }
    }

    async fn record_intents(
        &self,
        work: &mut [Work],
        boxes: &BTreeMap<String, Mailbox>,
        claimed: &[Claimed],
    ) -> Result<(), redis::RedisError> {
        let mut intents: Vec<(String, Member, Option<Copy>)> = Vec::new();
        for b in boxes.values() {
            for &i in &b.pending {
                let w = &mut work[i];
                if let Some(Step::Create(None)) = &w.step {
                    let c = &claimed[w.job.member_idx];
                    let ev = c.event.as_ref().expect("event");
                    let tx = mapping::transaction_id(
                        &ev.company_id,
                        &ev.schedule_id,
                        &w.job.mailbox,
                        ev.revision,
                    );
                    w.step = Some(Step::Create(Some(tx.clone())));
                    intents.push((
                        w.job.mailbox.clone(),
                        c.member.clone(),
                        Some(Copy {
                            user: w.job.user.clone(),
                            event_id: None,
                            rev: ev.revision,
                            tx: Some(tx),
                        }),
                    ));
                }
            }
        }
        self.copies.write_many(&intents).await
    }

    fn note(
        &self,
        claimed: &[Claimed],
        w: &Work,
        op: &str,
        outcome: ledger::Outcome,
        reason: &str,
    ) -> (Member, Entry) {
        let c = &claimed[w.job.member_idx];
        let rev = c.event.as_ref().map_or(0, |e| e.revision);
        (c.member.clone(), Entry::new(rev, &w.job.mailbox, op, outcome, reason))
    }

    fn backoff_schedule(&self) -> backon::ExponentialBackoff {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.cfg.retry.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(self.cfg.retry.max_backoff_ms))
            .with_jitter()
            .without_max_times()
            .build()
    }

    pub(crate) fn written(&self, op: &'static str, ev: &ScheduleEvent) {
        self.metrics
            .graph_writes
            .get_or_create(&Metrics::label("op", op))
            .inc();
        let latency = Timestamp::now().as_millisecond() - ev.occurred_at.as_millisecond();
        self.metrics
            .sync_latency_seconds
            .observe(latency.max(0) as f64 / 1000.0);
    }

    async fn dead_letter(&self, company: &Company, w: &Work, c: &Claimed) -> Outcome {
        let ev = c.event.as_ref().expect("event");
        let e = w.error.as_ref().expect("an error");
        let mailbox = &w.job.mailbox;
        let dl = DeadLetter {
            stage: "flush",
            reason: w.reason.to_string(),
            error: e.to_string(),
            company_id: Some(company.id.clone()),
            schedule_id: Some(ev.schedule_id.clone()),
            revision: Some(ev.revision),
            mailbox: Some(mailbox.clone()),
            graph_status: e.status,
            graph_code: Some(e.code.clone()),
            graph_message: Some(e.message.clone()),
            graph_request_id: e.request_id.clone(),
            attempts: w.attempts,
            first_failure: w.first_failure,
            last_failure: w.last_failure,
        };
        let raw = &c.staged.as_ref().expect("staged").raw;
        let key = ev.event_type.routing_key();
        let props = amqp::event_properties(&ev.event_id, key);
        let published = match self.publisher().await {
            Ok(p) => {
                dl.publish(&p, &self.cfg.amqp.dead_letter_exchange, key, &props, raw)
                    .await
            }
            Err(e) => Err(e),
        };
        match published {
            Ok(()) => {
                warn!(company = %company.id, schedule = %ev.schedule_id, mailbox = %mailbox, revision = ev.revision, reason = w.reason, status = ?e.status, code = %e.code, request_id = ?e.request_id, "flush: change dead-lettered");
                self.metrics
                    .dead_letters
                    .get_or_create(&vec![("stage", "flush".into()), ("reason", w.reason.into())])
                    .inc();
                let kind = match e.class {
                    ErrorClass::Credentials(_) => "credentials",
                    ErrorClass::Mailbox(_) => "mailbox",
                    ErrorClass::Retryable { .. } | ErrorClass::RefreshToken => "retries_exhausted",
                    _ => "rejected",
                };
                self.metrics
                    .company_failures
                    .get_or_create(&vec![("company", company.id.clone()), ("kind", kind.into())])
                    .inc();
                Outcome::Settled
            }
            Err(err) => {
                warn!(error = %err, "flush: dead-letter publish failed; the schedule will be retried");
                Outcome::Unsettled
            }
        }
    }
}

/// The next batch to send: the fullest ready mailbox's 20 if it has that many, else the
/// remainders of ready mailboxes packed together (a mailbox is never split across batches in
/// flight). Marks the mailboxes busy. `None` when nothing is ready.
fn next_batch(boxes: &mut BTreeMap<String, Mailbox>, batch_size: usize) -> Option<Vec<usize>> {
    let now = Instant::now();
    let mut ready: Vec<(&String, usize)> = boxes
        .iter()
        .filter(|(_, b)| b.lease.is_some() && !b.busy && b.not_before <= now && !b.pending.is_empty())
        .map(|(m, b)| (m, b.pending.len()))
        .collect();
    if ready.is_empty() {
        return None;
    }
    ready.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let (first, n) = (ready[0].0.clone(), ready[0].1);
    if n >= batch_size {
        let b = boxes.get_mut(&first).expect("ready");
        b.busy = true;
        return Some(b.pending.drain(..batch_size).collect());
    }
    let mut take: Vec<String> = Vec::new();
    let mut size = 0;
    for (m, n) in ready {
        if size + n <= batch_size {
            take.push(m.clone());
            size += n;
        }
    }
    let mut items = Vec::with_capacity(size);
    for m in take {
        let b = boxes.get_mut(&m).expect("ready");
        b.busy = true;
        items.extend(b.pending.drain(..));
    }
    Some(items)
}

fn requeue(boxes: &mut BTreeMap<String, Mailbox>, mailbox: &str, i: usize) {
    boxes
        .get_mut(mailbox)
        .expect("job's mailbox")
        .pending
        .push_front(i);
}

/// The first step of a job, from the copy as it is now; `None` if there is nothing to do.
fn first_step(job: &Job, c: &Claimed, copy: Option<Copy>) -> Option<Step> {
    let ev = c.event.as_ref()?;
    let born_here = c.staged.as_ref().is_some_and(|s| s.born_here);
    match (&job.kind, copy) {
        (OpKind::Upsert, Some(copy)) if copy.event_id.is_some() && copy.rev >= ev.revision => None,
        (OpKind::Upsert, Some(copy)) if copy.event_id.is_some() => {
            Some(Step::Update(copy.event_id.expect("checked")))
        }
        // An earlier create may have happened: look first, reuse its transactionId.
        (OpKind::Upsert, Some(intent)) => Some(Step::Lookup {
            then_create_tx: intent.tx,
        }),
        (OpKind::Upsert, None) if born_here => Some(Step::Create(None)),
        (OpKind::Upsert, None) => Some(Step::Lookup {
            then_create_tx: None,
        }),
        (OpKind::Delete, Some(copy)) if copy.event_id.is_some() => {
            Some(Step::Delete(copy.event_id.expect("checked")))
        }
        (OpKind::Delete, Some(_)) => Some(Step::LookupForDelete),
        (OpKind::Delete, None) if !born_here => Some(Step::LookupForDelete),
        (OpKind::Delete, None) => None,
    }
}

fn applied(ev: &ScheduleEvent, mailbox: &str, op: &str, reason: &str) -> Entry {
    Entry::new(ev.revision, mailbox, op, ledger::Outcome::Applied, reason)
}

/// A ledger entry for a Graph failure.
fn graph_entry(
    revision: u64,
    mailbox: &str,
    step: &Step,
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
        ..Entry::new(revision, mailbox, step.op(), outcome, reason)
    }
}

fn events_path(mailbox: &str) -> String {
    format!("/users/{}/events", path_segment(mailbox))
}

fn request(
    i: usize,
    step: &Step,
    ev: &ScheduleEvent,
    mailbox: &str,
    opts: &MappingOptions<'_>,
) -> GraphRequest {
    let id = i.to_string();
    let schedule = || ev.schedule.as_ref().expect("upserts carry the schedule");
    match step {
        Step::Lookup { .. } | Step::LookupForDelete => GraphRequest {
            id,
            method: Method::Get,
            path: format!(
                "{}?$filter={}&$select=id&$top=5",
                events_path(mailbox),
                url_encode(&mapping::tag_filter(&ev.company_id, &ev.schedule_id))
            ),
            body: None,
        },
        Step::Create(tx) => GraphRequest {
            id,
            method: Method::Post,
            path: events_path(mailbox),
            body: Some(mapping::create_body(
                schedule(),
                &ev.company_id,
                &ev.schedule_id,
                tx.as_deref().expect("intent recorded before the create"),
                opts,
            )),
        },
        Step::Update(event_id) => GraphRequest {
            id,
            method: Method::Patch,
            path: format!("{}/{}", events_path(mailbox), path_segment(event_id)),
            body: Some(mapping::update_body(
                schedule(),
                &ev.company_id,
                &ev.schedule_id,
                opts,
            )),
        },
        Step::Delete(event_id) => GraphRequest {
            id,
            method: Method::Delete,
            path: format!("{}/{}", events_path(mailbox), path_segment(event_id)),
            body: None,
        },
    }
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn first_id(body: &serde_json::Value) -> Option<String> {
    body.get("value")?
        .as_array()?
        .first()?
        .get("id")?
        .as_str()
        .map(str::to_string)
}
