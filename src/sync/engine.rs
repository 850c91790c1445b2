//! The scheduler: per-mailbox queues, mailbox leases, re-reads under the lease, write-ahead
//! intents, sending batches, and settling what finished. Decisions about an answer are
//! [`outcome::decide`]'s; this file does the I/O around them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use jiff::Timestamp;
use tokio::time::Instant;
use tracing::warn;

use super::Shared;
use super::batch::{self, MailboxKey, Queues, Request, Step};
use super::intake::{FlushReport, Intake};
use super::outcome::{self, CopyFate, Transition};
pub use super::work::Settlement;
use super::work::{Held, Work, graph_entry};
use crate::graph::client::{Credentials, GraphRequest, GraphResponse};
use crate::graph::error::{ErrorClass, GraphError};
use crate::graph::mapping::{self, MappingOptions};
use crate::graph::requests;
use crate::internal_events::{CopyWritten, GraphAnswered, InternalEvent, MailboxWaits};
use crate::ledger::{self, Entry};
use crate::metrics::GaugeGuard;
use crate::store::lease::Held as HeldLeases;
use crate::store::{CopyChange, CopyRecord, Member};

/// How long a short mailbox queue waits for more work before it is sent in a shared batch.
const LINGER: Duration = Duration::from_millis(50);
/// How long it may wait while more work is known to be coming (a backlog being claimed).
const MAX_LINGER: Duration = Duration::from_millis(500);

/// What one answered request comes to, once decided.
enum Answered {
    /// Queued again at the front of its mailbox.
    Requeue,
    /// Queued again after its mailbox waits (`Retry-After`, else backoff).
    Wait(MailboxKey, Option<Duration>),
    /// Given up: a dead letter.
    GiveUp(GraphError, &'static str),
    /// Finished (its copy is recorded in `settle`), or no longer known.
    Done,
}

pub type BatchResult = (
    Vec<u64>,
    Result<Vec<Result<GraphResponse, GraphError>>, GraphError>,
);
type BatchFuture = std::pin::Pin<Box<dyn std::future::Future<Output = BatchResult> + Send>>;

pub struct Engine<'a> {
    s: &'a Shared,
    next_id: u64,
    held: HashMap<u64, Held>,
    work: HashMap<u64, Work>,
    queues: Queues,
    credentials: HashMap<String, Credentials>,
    claims: Arc<std::sync::Mutex<HashSet<Member>>>,
    pub inflight: FuturesUnordered<BatchFuture>,
    slots: Arc<tokio::sync::Semaphore>,
    done: Vec<Member>,
    again: Vec<Member>,
    notes: Vec<(Member, Entry)>,
    /// Copies to record, and the changes that finish once they are.
    writes: Vec<CopyChange>,
    written: Vec<u64>,
    /// Changes queued under a lease whose create's transactionId is not recorded yet.
    unrecorded: Vec<u64>,
    synced_at: HashMap<(String, String), Instant>,
    /// The last claim was full: more work is due, so short queues wait for it to arrive
    /// rather than go out half-empty.
    more_coming: bool,
    /// Open changes this worker takes on at most: enough that every batch slot can be fed full
    /// batches (4 batches' worth per slot), so under a backlog batches are full.
    watermark: usize,
    report: FlushReport,
}

impl<'a> Engine<'a> {
    pub fn new(s: &'a Shared) -> Self {
        let slots = (s.cfg.graph.max_in_flight_total / 4).max(1);
        Self {
            s,
            next_id: 0,
            held: HashMap::new(),
            work: HashMap::new(),
            queues: Queues::new(s.cfg.mailbox_budget()),
            credentials: HashMap::new(),
            claims: Arc::new(std::sync::Mutex::new(HashSet::new())),
            inflight: FuturesUnordered::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            done: Vec::new(),
            again: Vec::new(),
            notes: Vec::new(),
            writes: Vec::new(),
            written: Vec::new(),
            unrecorded: Vec::new(),
            synced_at: HashMap::new(),
            more_coming: false,
            watermark: (s.cfg.window.claim_batch * 4).max(slots * s.cfg.graph.batch_size * 4),
            report: FlushReport::default(),
        }
    }

    pub fn claims(&self) -> Arc<std::sync::Mutex<HashSet<Member>>> {
        self.claims.clone()
    }

    pub fn leases(&self) -> HeldLeases {
        self.queues.held_leases()
    }

    /// Tells the fleet what this worker's flush holds: open changes, those waiting on their
    /// mailbox, and when the oldest was staged.
    pub fn report_load(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let load = &self.s.load;
        load.open.store(self.work.len() as u64, Relaxed);
        let waiting = self.queues.waiting(Instant::now());
        load.waiting.store(waiting as u64, Relaxed);
        let oldest = self
            .work
            .values()
            .filter_map(|w| w.claimed.staged.staged_at_ms)
            .min()
            .unwrap_or(0);
        load.oldest_open_ms.store(oldest, Relaxed);
        let paced = self.queues.take_paced();
        if !paced.is_zero() {
            self.s
                .metrics
                .fleet
                .mailbox_paced_wait_seconds
                .inc_by(paced.as_secs_f64());
        }
    }

    /// Nothing in flight.
    pub fn idle(&self) -> bool {
        self.inflight.is_empty()
    }

    pub fn has_room(&self) -> bool {
        self.work.len() < self.watermark
    }

    pub fn open(&self) -> usize {
        self.work.len()
    }

    pub fn set_more_coming(&mut self, more: bool) {
        self.more_coming = more;
    }

    pub fn report(&self) -> &FlushReport {
        &self.report
    }

    pub fn take_report(&mut self) -> FlushReport {
        std::mem::take(&mut self.report)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn linger(&self) -> Duration {
        if self.more_coming && self.has_room() {
            MAX_LINGER
        } else {
            LINGER
        }
    }

    /// Takes in newly claimed schedules and their planned changes.
    pub fn add(&mut self, intake: Intake) {
        self.report.add(&intake.report);
        self.notes.extend(intake.notes);
        for (id, c) in intake.companies {
            if let Some(creds) = c.credentials.as_ref().map(|s| s.credentials()) {
                self.credentials.insert(id, creds);
            }
        }
        self.done.extend(intake.empty);
        {
            let mut claims = self.claims.lock().expect("claims");
            claims.extend(intake.claimed.iter().map(|c| c.member.clone()));
        }
        let mut claim_ids: HashMap<Member, u64> = HashMap::new();
        for c in &intake.claimed {
            let id = self.id();
            claim_ids.insert(c.member.clone(), id);
            let held = Held {
                member: c.member.clone(),
                open: 0,
                settlement: Settlement::Settled,
            };
            self.held.insert(id, held);
        }
        let now = Instant::now();
        for job in intake.jobs {
            let Some(&claim) = claim_ids.get(&job.claimed.member) else {
                continue;
            };
            let wid = self.id();
            if let Some(h) = self.held.get_mut(&claim) {
                h.open += 1;
            }
            let company = job.claimed.member.company_id.clone();
            let key = (company.clone(), job.mailbox.clone());
            self.queues
                .enqueue(key, wid, now, || self.s.backoff_schedule());
            let work = Work {
                claimed: job.claimed,
                claim,
                company,
                mailbox: job.mailbox,
                user: job.op.user,
                kind: job.op.kind,
                step: Step::Unprepared,
                attempts: 0,
                first_failure: None,
                last_failure: None,
                throttled: 0,
                last_retry_after: None,
                drift: None,
            };
            self.work.insert(wid, work);
        }
        // Schedules with nothing to write (skips, already applied) are done at once.
        let idle: Vec<u64> = claim_ids
            .values()
            .copied()
            .filter(|id| self.held.get(id).is_some_and(|h| h.open == 0))
            .collect();
        for id in idle {
            self.finish_claim(id);
        }
    }

    /// Leases what can be sent, re-reads copies under the lease, records intents, sends
    /// batches. A Redis failure gives every open change back (their schedules are retried).
    pub async fn step(&mut self) {
        if let Err(err) = self.try_step().await {
            warn!(error = %err, redis = %crate::amqp::redacted(&self.s.cfg.redis.url), "flush: Redis did not answer mid-flush; the open schedules are given back and retried");
            self.abandon();
        }
    }

    async fn try_step(&mut self) -> Result<(), redis::RedisError> {
        // What is ready goes out first: a mailbox whose batch just finished sends its next one
        // without waiting for the round trips below.
        self.send();
        let free = self.slots.available_permits();
        if free > 0 {
            let batch_size = self.s.cfg.graph.batch_size;
            let candidates = self
                .queues
                .to_lease(free, batch_size, self.linger(), Instant::now());
            let leased = self.queues.lease(&self.s.leases, &candidates).await?;
            self.s.metrics.graph_mailboxes_leased.inc_by(leased as i64);
        }
        self.prepare().await?;
        self.record_intents().await?;
        self.send();
        Ok(())
    }

    /// Re-reads the copies of every change of a newly leased mailbox and decides its step.
    async fn prepare(&mut self) -> Result<(), redis::RedisError> {
        let ids: Vec<u64> = self
            .queues
            .take_unprepared()
            .into_iter()
            .filter(|id| self.work.contains_key(id))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let pairs: Vec<(&Member, &str)> = ids
            .iter()
            .filter_map(|id| self.work.get(id))
            .map(|w| (&w.claimed.member, w.mailbox.as_str()))
            .collect();
        let copies = match self.s.copies.pairs(&pairs).await {
            Ok(c) => c,
            Err(e) => {
                // Put them back; they are prepared under a later lease.
                for id in &ids {
                    if let Some(w) = self.work.get(id) {
                        self.queues.unprepare(&w.key(), *id);
                    }
                }
                return Err(e);
            }
        };
        for (id, copy) in ids.into_iter().zip(copies) {
            let Some(w) = self.work.get_mut(&id) else {
                continue;
            };
            w.drift = w.drift.or(copy.as_ref().and_then(|c| c.drift));
            let next = if copy.as_ref().is_some_and(|c| c.is_at_least(w.revision())) {
                None // another worker (or an earlier pass) applied it
            } else if w.step == Step::Unprepared {
                let born_here = w.claimed.staged.born_here;
                batch::first_step(w.kind, w.revision(), born_here, copy)
            } else {
                Some(w.step.clone()) // already past its first step (a lookup found the copy)
            };
            match next {
                Some(step) => {
                    if step == Step::NeedsIntent {
                        self.unrecorded.push(id);
                    }
                    w.step = step;
                    self.queues.push(&w.key(), id);
                }
                None => self.finish(id, Settlement::Settled),
            }
        }
        Ok(())
    }

    /// Records the transactionId of every create about to be sent, before it is sent: the
    /// creates queued since the last step (`unrecorded`), not every queue again.
    async fn record_intents(&mut self) -> Result<(), redis::RedisError> {
        if self.unrecorded.is_empty() {
            return Ok(());
        }
        let mut candidates = std::mem::take(&mut self.unrecorded);
        candidates.sort_unstable();
        candidates.dedup();
        let mut ids = Vec::new();
        let mut intents: Vec<CopyChange> = Vec::new();
        for id in candidates {
            let Some(w) = self.work.get(&id) else {
                continue; // finished or given back meanwhile
            };
            // Only a change re-read under its mailbox's current lease is ready to send; one whose
            // lease was given back is queued again (and listed again) under the next.
            let under_lease = self.queues.is_pending_under_lease(&w.key(), id);
            if w.step != Step::NeedsIntent || !under_lease {
                continue;
            }
            let ev = &w.claimed.event;
            let tx =
                mapping::transaction_id(&ev.company_id, &ev.schedule_id, &w.mailbox, ev.revision);
            let intent = CopyRecord {
                user: w.user.clone(),
                event_id: None,
                rev: ev.revision,
                tx: Some(tx),
                ..CopyRecord::default()
            };
            intents.push((w.mailbox.clone(), w.claimed.member.clone(), Some(intent)));
            ids.push(id);
        }
        if let Err(e) = self.s.copies.write_many(&intents).await {
            self.unrecorded.extend(ids);
            return Err(e);
        }
        // Recorded: each of these creates now carries its transactionId.
        for (id, (_, _, intent)) in ids.into_iter().zip(intents) {
            if let (Some(w), Some(tx)) = (self.work.get_mut(&id), intent.and_then(|c| c.tx)) {
                w.step = Step::Ready(Request::Create { tx });
            }
        }
        Ok(())
    }

    /// Sends batches while this worker has batch slots free.
    fn send(&mut self) {
        let batch_size = self.s.cfg.graph.batch_size;
        loop {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                return;
            };
            let linger = self.linger();
            // A create goes out only once its transactionId is recorded.
            let work = &self.work;
            let sendable = |id: u64| {
                work.get(&id)
                    .is_some_and(|w| matches!(w.step, Step::Ready(_)))
            };
            let Some((company, items)) = self.queues.next_batch(batch_size, linger, &sendable)
            else {
                return;
            };
            let Some(creds) = self.credentials.get(&company).cloned() else {
                // Planned only for companies with credentials; never here. Retried later.
                for id in items {
                    self.finish(id, Settlement::Unsettled);
                }
                continue;
            };
            let reqs = self.requests(&items);
            self.observe_in_flight(&items);
            let in_flight = GaugeGuard::new(
                &self.s.metrics.graph_requests_in_flight,
                items.len().min(4) as i64,
            );
            let graph = self.s.graph.clone();
            // The request runs on a task of its own: reading and parsing the answer then uses
            // any core, and never waits for the scheduler to be between its Redis round trips.
            let task = tokio::spawn(async move {
                let mut res = graph.batch(&company, &creds, &reqs).await;
                drop((permit, in_flight));
                // Keep only what the scheduler reads; the rest is freed here, not on its task.
                if let Ok(answers) = &mut res {
                    for resp in answers.iter_mut().flatten() {
                        resp.body = requests::trim_answer(&resp.body);
                    }
                }
                res
            });
            self.inflight.push(Box::pin(async move {
                let res = match task.await {
                    Ok(res) => res,
                    // A panic inside the client: a local failure, retried like any other.
                    Err(e) => Err(GraphError::local(
                        "BatchTaskFailed",
                        format!("the $batch task failed: {e}"),
                        ErrorClass::Retryable { after: None },
                    )),
                };
                (items, res)
            }));
        }
    }

    /// The Graph requests of a batch's changes (each is ready: `next_batch` checked).
    fn requests(&self, items: &[u64]) -> Vec<GraphRequest> {
        let opts = MappingOptions {
            category: &self.s.cfg.graph.category,
            default_zone: &self.s.default_zone,
        };
        items
            .iter()
            .filter_map(|id| {
                let w = self.work.get(id)?;
                match &w.step {
                    Step::Ready(r) => Some(r.to_graph(*id, &w.claimed.event, &w.mailbox, &opts)),
                    _ => None,
                }
            })
            .collect()
    }

    /// Graph runs at most 4 items of a batch at once: that is what is in flight per mailbox.
    fn observe_in_flight(&self, items: &[u64]) {
        let mut per_mailbox: BTreeMap<&str, usize> = BTreeMap::new();
        for w in items.iter().filter_map(|id| self.work.get(id)) {
            *per_mailbox.entry(w.mailbox.as_str()).or_default() += 1;
        }
        for n in per_mailbox.values() {
            self.s
                .metrics
                .graph_mailbox_requests_in_flight
                .observe((*n).min(4) as f64);
        }
    }

    /// When something may next be ready.
    pub fn next_wake(&self, next_claim: Option<Instant>) -> Instant {
        let mut wake = Instant::now() + Duration::from_millis(250);
        if let Some(c) = next_claim {
            wake = wake.min(c);
        }
        self.queues.next_wake(wake, LINGER)
    }

    /// Handles one finished batch: each answer through `outcome::decide`, then the dead
    /// letters, the mailboxes' waits, and the requeued changes.
    pub async fn complete(&mut self, (items, res): BatchResult) {
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
        let mut waits: BTreeMap<MailboxKey, Option<Duration>> = BTreeMap::new();
        let mut requeued = Vec::new();
        let mut dead = Vec::new();
        for (id, res) in items.iter().copied().zip(results) {
            match self.answer(id, res) {
                Answered::Requeue => requeued.push(id),
                Answered::Wait(key, after) => {
                    let slot = waits.entry(key).or_insert(None);
                    if let Some(a) = after {
                        *slot = Some(slot.map_or(a, |s| s.max(a)));
                    }
                    requeued.push(id);
                }
                Answered::GiveUp(e, reason) => dead.push((id, e, reason)),
                Answered::Done => {}
            }
        }
        let mut settled = Vec::new();
        for (id, e, reason) in dead {
            settled.push((id, self.give_up(id, &e, reason).await));
        }
        self.free_mailboxes(&items, &waits);
        for id in requeued.into_iter().rev() {
            self.requeue(id);
        }
        for (id, settlement) in settled {
            self.finish(id, settlement);
        }
    }

    /// Decides what one answer means for its change and records what follows from it.
    fn answer(&mut self, id: u64, res: Result<GraphResponse, GraphError>) -> Answered {
        let s = self.s;
        let Some(w) = self.work.get_mut(&id) else {
            return Answered::Done;
        };
        let Step::Ready(request) = w.step.clone() else {
            return Answered::Done; // only ready changes are sent
        };
        w.attempts += 1;
        let (status, throttled) = match &res {
            Ok(r) => (r.status, false),
            Err(e) => (e.status.unwrap_or(0), e.status == Some(429)),
        };
        GraphAnswered { status, throttled }.emit(&s.metrics);
        if res.is_err() {
            let now = Timestamp::now();
            w.first_failure.get_or_insert(now);
            w.last_failure = Some(now);
        } else if request.op() == "lookup" {
            self.report.lookups += 1;
        }
        let ev = &w.claimed.event;
        let cx = outcome::Context {
            company_id: &ev.company_id,
            schedule_id: &ev.schedule_id,
            graph_base: s.graph.base_url(),
            attempts: w.attempts,
            max_attempts: s.cfg.retry.max_attempts,
            age: w.age(Duration::ZERO),
            give_up_after: s.cfg.give_up_after(),
        };
        match outcome::decide(&request, res.as_ref().map(|r| &r.body), &cx) {
            Transition::Again(step) => {
                w.step = step;
                w.attempts = 0;
                Answered::Requeue
            }
            Transition::Finished {
                copy,
                op,
                reason,
                written,
            } => {
                self.finished(id, copy, op, reason, written);
                Answered::Done
            }
            Transition::Retry {
                request: next,
                retry_after,
                refresh_token,
                counted,
            } => {
                if refresh_token {
                    s.graph.forget_token(&w.company);
                }
                if !counted {
                    // Throttling: waited out, not an attempt spent.
                    w.attempts -= 1;
                    w.throttled += 1;
                    w.last_retry_after = retry_after;
                }
                if let Err(e) = &res {
                    let entry = graph_entry(
                        ev.revision,
                        &w.mailbox,
                        request.op(),
                        ledger::Outcome::Retrying,
                        "throttled_or_unavailable",
                        e,
                        w.attempts,
                    );
                    self.notes.push((w.claimed.member.clone(), entry));
                }
                w.step = Step::Ready(next);
                Answered::Wait(w.key(), retry_after)
            }
            Transition::GiveUp { reason } => match res {
                Err(e) => Answered::GiveUp(e, reason),
                Ok(_) => Answered::Done, // decide gives up on failures only
            },
        }
    }

    /// A change finished: its copy is recorded in `settle` (then it is over), the write is
    /// counted, and the ledger notes it.
    fn finished(&mut self, id: u64, copy: CopyFate, op: &'static str, reason: &str, written: bool) {
        let Some(w) = self.work.get(&id) else {
            return;
        };
        let ev = &w.claimed.event;
        let record = match copy {
            CopyFate::Put { event_id, tx, ck } => Some(CopyRecord {
                user: w.user.clone(),
                event_id,
                rev: ev.revision,
                tx,
                ck,
                drift: None,
            }),
            CopyFate::Remove => None,
        };
        self.writes
            .push((w.mailbox.clone(), w.claimed.member.clone(), record));
        if written {
            match op {
                "create" => self.report.creates += 1,
                "update" => self.report.updates += 1,
                _ => self.report.deletes += 1,
            }
            CopyWritten {
                op,
                event: ev,
                mailbox: &w.mailbox,
            }
            .emit(&self.s.metrics);
        }
        let reason = w.ledger_reason(op, written, reason, &self.s.metrics);
        let entry = Entry::new(
            ev.revision,
            &w.mailbox,
            op,
            ledger::Outcome::Applied,
            reason,
        );
        self.notes.push((w.claimed.member.clone(), entry));
        self.written.push(id);
    }

    /// Dead-letters a change given up on (`dead::give_up`) and notes it in the ledger.
    async fn give_up(&mut self, id: u64, e: &GraphError, reason: &'static str) -> Settlement {
        let Some(w) = self.work.get(&id) else {
            return Settlement::Settled;
        };
        let (settlement, entry) = super::dead::give_up(self.s, w, e, reason).await;
        if settlement == Settlement::Settled {
            self.report.dead_letters += 1;
        }
        if let Some(entry) = entry {
            self.notes.push((w.claimed.member.clone(), entry));
        }
        settlement
    }

    /// Frees the mailboxes of a finished batch; the ones that must wait get their `not_before`.
    fn free_mailboxes(&mut self, items: &[u64], waits: &BTreeMap<MailboxKey, Option<Duration>>) {
        let touched: HashSet<MailboxKey> = items
            .iter()
            .filter_map(|id| self.work.get(id))
            .map(Work::key)
            .chain(waits.keys().cloned())
            .collect();
        let cap = Duration::from_secs(self.s.cfg.retry.max_retry_after_seconds);
        for ((company, mailbox), wait) in self.queues.free(touched, waits, cap) {
            MailboxWaits {
                company: &company,
                mailbox: &mailbox,
                wait,
            }
            .emit(&self.s.metrics);
        }
    }

    /// Puts a change back at the front of its mailbox's queue.
    fn requeue(&mut self, id: u64) {
        let Some(w) = self.work.get(&id) else {
            return;
        };
        if w.step == Step::NeedsIntent {
            self.unrecorded.push(id);
        }
        self.queues.push_front(&w.key(), id);
    }

    /// A change is over; its schedule settles when its last change is.
    fn finish(&mut self, id: u64, settlement: Settlement) {
        let Some(w) = self.work.remove(&id) else {
            return;
        };
        let Some(h) = self.held.get_mut(&w.claim) else {
            return;
        };
        h.open = h.open.saturating_sub(1);
        h.settlement = h.settlement.worst(settlement);
        if h.open == 0 {
            self.finish_claim(w.claim);
        }
    }

    fn finish_claim(&mut self, claim: u64) {
        let Some(h) = self.held.remove(&claim) else {
            return;
        };
        self.claims.lock().expect("claims").remove(&h.member);
        match h.settlement {
            Settlement::Settled => self.done.push(h.member),
            Settlement::Unsettled => self.again.push(h.member),
        }
    }

    /// Gives every open change back (Redis failed, or shutdown): their schedules are due again.
    pub fn abandon(&mut self) {
        for id in self.queues.drain_waiting() {
            self.finish(id, Settlement::Unsettled);
        }
    }

    /// Records the copies of what finished, completes or releases settled schedules, writes the
    /// ledger (one round trip each), and gives back idle mailbox leases.
    pub async fn settle(&mut self) {
        self.record_copies().await;
        let s = self.s;
        if !self.done.is_empty() {
            match s.windows.complete(&s.token, &self.done).await {
                Ok(_) => {
                    s.metrics.schedules_flushed.inc_by(self.done.len() as u64);
                    self.done.clear();
                }
                Err(e) => warn!(error = %e, "flush: claims not completed; retried"),
            }
        }
        if !self.again.is_empty() {
            match s
                .windows
                .release(&s.token, &self.again, Duration::from_millis(500))
                .await
            {
                Ok(_) => self.again.clear(),
                Err(e) => warn!(error = %e, "flush: claims not released; they expire"),
            }
        }
        if !self.notes.is_empty() {
            let notes = std::mem::take(&mut self.notes);
            if let Err(e) = s.ledger.record(&notes).await {
                warn!(error = %e, "flush: the sync ledger could not be written");
            }
        }
        let released = self.queues.release_idle(&s.leases).await;
        s.metrics.graph_mailboxes_leased.dec_by(released as i64);
    }

    /// Writes the finished changes' copies in one round trip, then finishes them; notes the
    /// users whose mailbox took a write (their last sync time, at most every 30 s).
    async fn record_copies(&mut self) {
        if self.written.is_empty() && self.writes.is_empty() {
            return;
        }
        let writes = std::mem::take(&mut self.writes);
        let settlement = match self.s.copies.write_many(&writes).await {
            Ok(()) => Settlement::Settled,
            Err(e) => {
                warn!(error = %e, "flush: copies not recorded; those schedules are retried");
                Settlement::Unsettled
            }
        };
        let now = Instant::now();
        let mut synced: HashSet<(String, String)> = HashSet::new();
        for w in self.written.iter().filter_map(|id| self.work.get(id)) {
            let key = (w.company.clone(), w.user.clone());
            let due = self
                .synced_at
                .get(&key)
                .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(30));
            if due {
                synced.insert(key);
            }
        }
        for id in std::mem::take(&mut self.written) {
            self.finish(id, settlement);
        }
        if settlement == Settlement::Settled {
            for key in synced {
                let _ = self.s.directory.record_sync(&key.0, &key.1, Ok(())).await;
                self.synced_at.insert(key, now);
            }
        }
    }
}
