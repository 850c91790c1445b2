//! Apply: the flush's writes to Graph, as one continuous scheduler per worker.
//!
//! The worker claims due schedules (`flush::Flusher::intake`) while it has fewer open changes
//! than its batch slots can take (slots × 20 × 4), and feeds each planned change into its
//! mailbox's queue.
//! Per mailbox:
//! - the mailbox is leased (exclusively, across all workers) only while this worker sends to it
//!   or waits out its `Retry-After`, and given back as soon as its queue is empty, so workers
//!   interleave on shared mailboxes;
//! - each time the lease is taken, the copies of the queued changes are re-read: a copy another
//!   worker moved to a newer revision is left alone (no regression);
//! - at most one `$batch` is in flight. Graph runs at most 4 items of a batch at once, so no
//!   mailbox sees more than 4 requests in flight. A queue of 20 or more gets a batch of its own
//!   (4 in flight, the most Graph allows); a shorter queue waits up to `LINGER` for more work,
//!   then shares a batch with other short queues, so the request count stays near
//!   ⌈writes / 20⌉;
//! - a retryable failure delays only its mailbox (`Retry-After`, else backoff with jitter).
//!
//! A claimed schedule is settled (completed, or released to be retried) as soon as its last
//! change is, and the sync ledger gets one entry per attempt.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use jiff::Timestamp;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::amqp;
use crate::deadletter::DeadLetter;
use crate::event::ScheduleEvent;
use crate::flush::{AbortOnDrop, Claimed, Copy, FlushReport, Flusher, OpKind, Outcome};
use crate::graph::client::{Credentials, GraphRequest, GraphResponse};
use crate::graph::error::{ErrorClass, GraphError};
use crate::graph::mapping::{self, MappingOptions};
use crate::graph::requests::{self, LookupPage};
use crate::ingest::Backoff;
use crate::ledger::{self, Entry};
use crate::metrics::{GaugeGuard, Metrics};
use crate::tenants::Company;
use crate::window::Member;

/// How long a short mailbox queue waits for more work before it is sent in a shared batch.
const LINGER: Duration = Duration::from_millis(50);
/// How long it may wait while more work is known to be coming (a backlog being claimed).
const MAX_LINGER: Duration = Duration::from_millis(500);

/// One change to one mailbox, as planned.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub member_idx: usize,
    pub mailbox: String,
    pub user: String,
    pub kind: OpKind,
}

/// The step a change is at.
#[derive(Debug, Clone)]
enum Step {
    /// Look for the copy by its tag (`page`: the next page of an earlier look), then update it,
    /// or create it with this transactionId.
    Lookup {
        then_create_tx: Option<String>,
        page: Option<String>,
    },
    /// Look for the copy by its tag, then delete it.
    LookupForDelete {
        page: Option<String>,
    },
    Create(Option<String>),
    Update(String),
    Delete(String),
}

impl Step {
    fn op(&self) -> &'static str {
        match self {
            Step::Lookup { .. } | Step::LookupForDelete { .. } => "lookup",
            Step::Create(_) => "create",
            Step::Update(_) => "update",
            Step::Delete(_) => "delete",
        }
    }
}

/// A change in flight through the scheduler.
struct Work {
    member: u64,
    company: String,
    mailbox: String,
    user: String,
    kind: OpKind,
    step: Option<Step>,
    attempts: u32,
    error: Option<GraphError>,
    reason: &'static str,
    first_failure: Option<Timestamp>,
    last_failure: Option<Timestamp>,
}

/// A claimed schedule and how many of its changes are still open.
struct Held {
    claimed: Arc<Claimed>,
    open: usize,
    outcome: Outcome,
}

/// A mailbox's queue.
struct Mailbox {
    pending: VecDeque<u64>,
    /// Changes not yet re-read under the current lease.
    unprepared: Vec<u64>,
    lease: Option<String>,
    busy: bool,
    not_before: Instant,
    next_lease_try: Instant,
    oldest: Instant,
    backoff: backon::ExponentialBackoff,
}

type BatchResult = (
    Vec<u64>,
    Result<Vec<Result<GraphResponse, GraphError>>, GraphError>,
);
type BatchFuture = std::pin::Pin<Box<dyn std::future::Future<Output = BatchResult> + Send>>;

/// The scheduler's state.
struct Engine<'a> {
    f: &'a Flusher,
    next_id: u64,
    held: HashMap<u64, Held>,
    work: HashMap<u64, Work>,
    boxes: BTreeMap<(String, String), Mailbox>,
    companies: HashMap<String, (Company, Credentials)>,
    leases: Arc<std::sync::Mutex<BTreeMap<(String, String), String>>>,
    claims: Arc<std::sync::Mutex<HashSet<Member>>>,
    inflight: FuturesUnordered<BatchFuture>,
    slots: Arc<tokio::sync::Semaphore>,
    done: Vec<Member>,
    again: Vec<Member>,
    notes: Vec<(Member, Entry)>,
    /// Copies to record, and the changes that finish once they are.
    writes: Vec<(String, Member, Option<Copy>)>,
    written: Vec<u64>,
    /// Creates queued under a lease whose transactionId is not recorded yet.
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

impl Flusher {
    /// Flushes due schedules until `shutdown` turns true; then sends nothing new, lets the
    /// batches in flight finish, and gives back the claims still open.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut e = Engine::new(self);
        let watermark = e.watermark;
        let _claim_renewer = AbortOnDrop(self.renew_claims(e.claims.clone()));
        let _lease_renewer = AbortOnDrop(self.leases.renew_keys(e.leases.clone()));
        let poll = Duration::from_millis(self.cfg.window.poll_interval_ms);

        let mut next_claim = Instant::now();
        let mut errors = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut last_log = Instant::now();
        // Claiming and planning run beside the sending, so a slow intake never delays a batch.
        type IntakeFuture = std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<crate::flush::Intake, redis::RedisError>>
                    + Send,
            >,
        >;
        let mut intake: Option<IntakeFuture> = None;
        loop {
            let stopping = *shutdown.borrow();
            if stopping && e.inflight.is_empty() && intake.is_none() {
                break;
            }
            // Lease, re-read, record intents, send what is ready.
            if !stopping && let Err(err) = e.step().await {
                warn!(error = %err, "flush: Redis failed mid-flush; the open schedules are retried");
                e.abandon();
            }
            // Settle what finished and write the ledger.
            e.settle().await;
            if last_log.elapsed() >= Duration::from_secs(10) && e.report != FlushReport::default() {
                info!(
                    creates = e.report.creates,
                    updates = e.report.updates,
                    deletes = e.report.deletes,
                    dead_letters = e.report.dead_letters,
                    skipped = e.report.skipped,
                    open = e.work.len(),
                    "flush: progress"
                );
                e.report = FlushReport::default();
                last_log = Instant::now();
            }
            // Take more work while there is room for it.
            let room = !stopping && e.work.len() < watermark;
            if room && intake.is_none() && Instant::now() >= next_claim {
                let (f, n) = (self.clone(), self.cfg.window.claim_batch);
                intake = Some(Box::pin(async move { f.intake(n).await }));
            }
            // Wait for a batch, more work, the next mailbox to become ready, or shutdown.
            let wake = e
                .next_wake((room && intake.is_none()).then_some(next_claim))
                .max(Instant::now() + Duration::from_millis(1));
            tokio::select! {
                Some(done) = e.inflight.next(), if !e.inflight.is_empty() => e.complete(done).await,
                res = async { intake.as_mut().expect("checked").await }, if intake.is_some() => {
                    intake = None;
                    let now = Instant::now();
                    match res {
                        Ok(i) if i.claimed.is_empty() => {
                            e.more_coming = false;
                            next_claim = now + poll;
                            self.observe_backlog().await;
                        }
                        Ok(i) => {
                            // A full claim means more is due: short queues wait for it.
                            e.more_coming = i.claimed.len() >= self.cfg.window.claim_batch;
                            e.add(i);
                            errors.reset();
                        }
                        Err(err) => {
                            let wait = errors.delay();
                            warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "flush: claiming failed; retrying");
                            next_claim = now + wait;
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.changed(), if !stopping => {}
            }
        }
        e.abandon();
        e.settle().await;
    }

    fn renew_claims(
        &self,
        claims: Arc<std::sync::Mutex<HashSet<Member>>>,
    ) -> tokio::task::JoinHandle<()> {
        let (w, token) = (self.windows.clone(), self.token.clone());
        let lease = Duration::from_secs(self.cfg.window.claim_lease_seconds);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let now: Vec<Member> = claims.lock().expect("claims").iter().cloned().collect();
                if let Err(e) = w.renew(&token, &now, lease).await {
                    warn!(error = %e, "flush: claims not renewed");
                }
            }
        })
    }
}

impl<'a> Engine<'a> {
    fn new(f: &'a Flusher) -> Self {
        Self {
            f,
            next_id: 0,
            held: HashMap::new(),
            work: HashMap::new(),
            boxes: BTreeMap::new(),
            companies: HashMap::new(),
            leases: Arc::new(std::sync::Mutex::new(BTreeMap::new())),
            claims: Arc::new(std::sync::Mutex::new(HashSet::new())),
            inflight: FuturesUnordered::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(
                (f.cfg.graph.max_in_flight_total / 4).max(1),
            )),
            done: Vec::new(),
            again: Vec::new(),
            notes: Vec::new(),
            writes: Vec::new(),
            written: Vec::new(),
            unrecorded: Vec::new(),
            synced_at: HashMap::new(),
            more_coming: false,
            watermark: (f.cfg.window.claim_batch * 4)
                .max((f.cfg.graph.max_in_flight_total / 4).max(1) * f.cfg.graph.batch_size * 4),
            report: FlushReport::default(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Takes in newly claimed schedules and their planned changes.
    fn add(&mut self, intake: crate::flush::Intake) {
        let crate::flush::Intake {
            claimed,
            jobs,
            notes,
            companies,
            report,
        } = intake;
        self.report.add(&report);
        self.notes.extend(notes);
        for (id, c) in companies {
            if let Some(creds) = c.credentials.as_ref().map(|s| s.credentials()) {
                self.companies.insert(id, (c, creds));
            }
        }
        let mut ids = Vec::with_capacity(claimed.len());
        {
            let mut claims = self.claims.lock().expect("claims");
            for c in &claimed {
                claims.insert(c.member.clone());
            }
        }
        for c in claimed {
            let id = self.id();
            ids.push(id);
            self.held.insert(
                id,
                Held {
                    claimed: Arc::new(c),
                    open: 0,
                    outcome: Outcome::Settled,
                },
            );
        }
        let now = Instant::now();
        for job in jobs {
            let member = ids[job.member_idx];
            let company = self.held[&member].claimed.member.company_id.clone();
            let wid = self.id();
            self.held.get_mut(&member).expect("held").open += 1;
            let key = (company.clone(), job.mailbox.clone());
            let b = self.boxes.entry(key).or_insert_with(|| Mailbox {
                pending: VecDeque::new(),
                unprepared: Vec::new(),
                lease: None,
                busy: false,
                not_before: now,
                next_lease_try: now,
                oldest: now,
                backoff: self.f.backoff_schedule(),
            });
            if b.pending.is_empty() && b.unprepared.is_empty() {
                b.oldest = now;
            }
            b.unprepared.push(wid);
            self.work.insert(
                wid,
                Work {
                    member,
                    company,
                    mailbox: job.mailbox,
                    user: job.user,
                    kind: job.kind,
                    step: None,
                    attempts: 0,
                    error: None,
                    reason: "",
                    first_failure: None,
                    last_failure: None,
                },
            );
        }
        // Schedules with nothing to write (skips, already applied) are done at once.
        for id in ids {
            if self.held[&id].open == 0 {
                self.finish_member(id);
            }
        }
    }

    fn claimed(&self, w: &Work) -> &Claimed {
        &self.held[&w.member].claimed
    }

    /// Leases what can be sent, re-reads copies under the lease, records intents, sends batches.
    async fn step(&mut self) -> Result<(), redis::RedisError> {
        let now = Instant::now();
        let batch_size = self.f.cfg.graph.batch_size;
        // What is ready goes out first: a mailbox whose batch just finished sends its next one
        // without waiting for the round trips below.
        self.send();
        let free = self.slots.available_permits();
        if free > 0 {
            let candidates = self.sendable(free, batch_size, now);
            self.acquire(&candidates).await?;
        }
        self.prepare().await?;
        self.record_intents().await?;
        self.send();
        Ok(())
    }

    /// The unleased mailboxes worth leasing now: as many as `free` batch slots can send at once
    /// (a full queue takes a slot; short queues that have lingered share one), in random order
    /// so workers sharing mailboxes spread over them. A lease is never taken just to sit on it.
    fn sendable(&self, free: usize, batch_size: usize, now: Instant) -> Vec<(String, String)> {
        let linger = if self.more_coming && self.work.len() < self.watermark {
            MAX_LINGER
        } else {
            LINGER
        };
        let mut open: Vec<(&(String, String), usize, bool)> = self
            .boxes
            .iter()
            .filter(|(_, b)| {
                b.lease.is_none() && !b.busy && b.next_lease_try <= now && b.not_before <= now
            })
            .map(|(k, b)| {
                let queued = b.pending.len() + b.unprepared.len();
                (k, queued, now >= b.oldest + linger)
            })
            .filter(|(_, q, _)| *q > 0)
            .collect();
        {
            use rand::seq::SliceRandom;
            open.shuffle(&mut rand::rng());
        }
        let mut picked = Vec::new();
        let mut budget = free;
        for (k, q, _) in open.iter().filter(|(_, q, _)| *q >= batch_size) {
            if budget == 0 {
                return picked;
            }
            picked.push((*k).clone());
            budget -= 1;
            let _ = q;
        }
        let short_total: usize = open
            .iter()
            .filter(|(_, q, _)| *q < batch_size)
            .map(|(_, q, _)| q)
            .sum();
        let mut room = budget * batch_size;
        for (k, q, lingered) in open.iter().filter(|(_, q, _)| *q < batch_size) {
            if room == 0 {
                break;
            }
            if *lingered || short_total >= batch_size {
                picked.push((*k).clone());
                room = room.saturating_sub(*q);
            }
        }
        picked
    }

    async fn acquire(&mut self, candidates: &[(String, String)]) -> Result<(), redis::RedisError> {
        let mut by_company: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (c, m) in candidates {
            by_company.entry(c).or_default().push(m.clone());
        }
        let now = Instant::now();
        for (company, mailboxes) in by_company {
            let tokens = self.f.leases.try_acquire_many(company, &mailboxes).await?;
            for (m, t) in mailboxes.into_iter().zip(tokens) {
                let key = (company.to_string(), m);
                let b = self.boxes.get_mut(&key).expect("candidate");
                match t {
                    Some(t) => {
                        self.f.metrics.graph_mailboxes_leased.inc();
                        self.leases
                            .lock()
                            .expect("leases")
                            .insert(key.clone(), t.clone());
                        b.lease = Some(t);
                        // Everything queued is re-read under this lease.
                        let queued: Vec<u64> = b.pending.drain(..).collect();
                        b.unprepared.extend(queued);
                    }
                    None => {
                        let jitter = rand::random::<u64>() % 50;
                        b.next_lease_try = now + Duration::from_millis(50 + jitter);
                    }
                }
            }
        }
        Ok(())
    }

    /// Re-reads the copies of every change of a newly leased mailbox and decides its step.
    async fn prepare(&mut self) -> Result<(), redis::RedisError> {
        let ids: Vec<u64> = self
            .boxes
            .values_mut()
            .filter(|b| b.lease.is_some() && !b.unprepared.is_empty())
            .flat_map(|b| std::mem::take(&mut b.unprepared))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let pairs: Vec<(&Member, &str)> = ids
            .iter()
            .map(|id| {
                let w = &self.work[id];
                (&self.held[&w.member].claimed.member, w.mailbox.as_str())
            })
            .collect();
        let copies = match self.f.copies.pairs(&pairs).await {
            Ok(c) => c,
            Err(e) => {
                // Put them back; they are prepared under a later lease.
                for id in &ids {
                    let w = &self.work[id];
                    let key = (w.company.clone(), w.mailbox.clone());
                    self.boxes.get_mut(&key).expect("box").unprepared.push(*id);
                }
                return Err(e);
            }
        };
        for (id, copy) in ids.into_iter().zip(copies) {
            let w = &self.work[&id];
            let c = self.claimed(w);
            let ev = c.event.as_ref().expect("planned from an event");
            let applied = copy
                .as_ref()
                .is_some_and(|c| c.event_id.is_some() && c.rev >= ev.revision);
            let step = if applied {
                None
            } else {
                match &w.step {
                    // Already past its first step (a lookup found the copy): keep it.
                    Some(s) => Some(s.clone()),
                    None => first_step(&w.kind, c, copy),
                }
            };
            match step {
                Some(s) => {
                    let key = (w.company.clone(), w.mailbox.clone());
                    if matches!(s, Step::Create(None)) {
                        self.unrecorded.push(id);
                    }
                    self.work.get_mut(&id).expect("work").step = Some(s);
                    self.boxes.get_mut(&key).expect("box").pending.push_back(id);
                }
                None => self.finish(id, Outcome::Settled),
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
        let mut intents: Vec<(String, Member, Option<Copy>)> = Vec::new();
        for id in candidates {
            let Some(w) = self.work.get(&id) else {
                continue; // finished or given back meanwhile
            };
            if !matches!(w.step, Some(Step::Create(None))) {
                continue;
            }
            // Only a change re-read under its mailbox's current lease is ready to send; one whose
            // lease was given back is queued again (and listed again) under the next.
            let key = (w.company.clone(), w.mailbox.clone());
            if !self
                .boxes
                .get(&key)
                .is_some_and(|b| b.lease.is_some() && b.pending.contains(&id))
            {
                continue;
            }
            let c = &self.held[&w.member].claimed;
            let ev = c.event.as_ref().expect("event");
            let tx =
                mapping::transaction_id(&ev.company_id, &ev.schedule_id, &w.mailbox, ev.revision);
            intents.push((
                w.mailbox.clone(),
                c.member.clone(),
                Some(Copy {
                    user: w.user.clone(),
                    event_id: None,
                    rev: ev.revision,
                    tx: Some(tx),
                }),
            ));
            ids.push(id);
        }
        if intents.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.f.copies.write_many(&intents).await {
            self.unrecorded.extend(ids);
            return Err(e);
        }
        // Recorded: each of these creates now carries its transactionId.
        for (id, (_, _, copy)) in ids.into_iter().zip(intents) {
            let w = self.work.get_mut(&id).expect("work");
            w.step = Some(Step::Create(copy.and_then(|c| c.tx)));
        }
        Ok(())
    }

    /// Sends batches while this worker has batch slots free.
    fn send(&mut self) {
        let opts = MappingOptions {
            category: &self.f.cfg.graph.category,
            default_zone: &self.f.default_zone,
        };
        let batch_size = self.f.cfg.graph.batch_size;
        loop {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                return;
            };
            let linger = if self.more_coming && self.work.len() < self.watermark {
                MAX_LINGER
            } else {
                LINGER
            };
            // A create goes out only once its transactionId is recorded.
            let work = &self.work;
            let recorded = |id: u64| !matches!(work[&id].step, Some(Step::Create(None)) | None);
            let Some((company, items)) = next_batch(&mut self.boxes, batch_size, linger, &recorded)
            else {
                return;
            };
            let reqs: Vec<GraphRequest> = items
                .iter()
                .map(|id| {
                    let w = &self.work[id];
                    let ev = self.held[&w.member].claimed.event.as_ref().expect("event");
                    request(
                        *id,
                        w.step.as_ref().expect("prepared"),
                        ev,
                        &w.mailbox,
                        &opts,
                    )
                })
                .collect();
            // Graph runs at most 4 items of a batch at once: that is what is in flight, overall
            // and per mailbox.
            let mut per_mailbox: BTreeMap<&str, usize> = BTreeMap::new();
            for id in &items {
                *per_mailbox
                    .entry(self.work[id].mailbox.as_str())
                    .or_default() += 1;
            }
            for n in per_mailbox.values() {
                self.f
                    .metrics
                    .graph_mailbox_requests_in_flight
                    .observe((*n).min(4) as f64);
            }
            let in_flight = GaugeGuard::new(
                &self.f.metrics.graph_requests_in_flight,
                items.len().min(4) as i64,
            );
            let graph = self.f.graph.clone();
            let creds = self.companies[&company].1.clone();
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

    /// Gives back the leases of mailboxes with nothing in flight and no Retry-After to wait
    /// out; what they still have queued is re-read under their next lease.
    async fn release_idle(&mut self) {
        let mut release: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        let now = Instant::now();
        for ((company, mailbox), b) in self.boxes.iter_mut() {
            // Not sending and not waiting out a Retry-After: let other workers have it.
            if !b.busy
                && b.not_before <= now
                && let Some(t) = b.lease.take()
            {
                release
                    .entry(company.clone())
                    .or_default()
                    .push((mailbox.clone(), t));
            }
        }
        for (company, held) in release {
            {
                let mut leases = self.leases.lock().expect("leases");
                for (m, _) in &held {
                    leases.remove(&(company.clone(), m.clone()));
                }
            }
            self.f
                .metrics
                .graph_mailboxes_leased
                .dec_by(held.len() as i64);
            self.f.leases.release_many(&company, &held).await;
        }
        self.boxes.retain(|_, b| {
            b.lease.is_some() || !b.pending.is_empty() || !b.unprepared.is_empty() || b.busy
        });
    }

    /// When something may next be ready.
    fn next_wake(&self, next_claim: Option<Instant>) -> Instant {
        let mut wake = Instant::now() + Duration::from_millis(250);
        if let Some(c) = next_claim {
            wake = wake.min(c);
        }
        for b in self.boxes.values() {
            if b.busy {
                continue;
            }
            if b.lease.is_none() && !(b.pending.is_empty() && b.unprepared.is_empty()) {
                wake = wake.min(b.next_lease_try);
            } else if !b.pending.is_empty() {
                wake = wake.min(b.not_before.max(b.oldest + LINGER));
            }
        }
        wake
    }

    /// Handles one finished batch.
    async fn complete(&mut self, (items, res): BatchResult) {
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
        let max_attempts = self.f.cfg.retry.max_attempts;
        let mut writes: Vec<(String, Member, Option<Copy>)> = Vec::new();
        let mut waits: BTreeMap<(String, String), Option<Duration>> = BTreeMap::new();
        let mut finished: Vec<u64> = Vec::new();
        let mut requeued: Vec<u64> = Vec::new();
        let mut failed: Vec<u64> = Vec::new();
        for (id, res) in items.iter().copied().zip(results) {
            let claimed = self.held[&self.work[&id].member].claimed.clone();
            let ev = claimed.event.as_ref().expect("event");
            let member = claimed.member.clone();
            let w = self.work.get_mut(&id).expect("work");
            let mailbox = w.mailbox.clone();
            w.attempts += 1;
            let status = match &res {
                Ok(r) => r.status,
                Err(e) => e.status.unwrap_or(0),
            };
            self.f
                .metrics
                .graph_requests
                .get_or_create(&Metrics::label("status", status.to_string()))
                .inc();
            let step = w.step.clone().expect("prepared");
            match (res, step) {
                (Ok(resp), Step::Lookup { then_create_tx, .. }) => {
                    self.report.lookups += 1;
                    // Only a copy tagged with exactly this schedule is ours: Graph's filter
                    // also returns the copies of ids differing only in case.
                    let found = LookupPage::read(
                        &resp.body,
                        &ev.company_id,
                        &ev.schedule_id,
                        self.f.graph.base_url(),
                    );
                    w.step = Some(match (found.exact.into_iter().next(), found.next) {
                        (Some(id), _) => Step::Update(id),
                        (None, Some(page)) => Step::Lookup {
                            then_create_tx,
                            page: Some(page),
                        },
                        (None, None) => Step::Create(then_create_tx),
                    });
                    w.attempts = 0;
                    requeued.push(id);
                }
                (Ok(resp), Step::LookupForDelete { .. }) => {
                    self.report.lookups += 1;
                    w.attempts = 0;
                    let found = LookupPage::read(
                        &resp.body,
                        &ev.company_id,
                        &ev.schedule_id,
                        self.f.graph.base_url(),
                    );
                    match (found.exact.into_iter().next(), found.next) {
                        (Some(eid), _) => {
                            w.step = Some(Step::Delete(eid));
                            requeued.push(id);
                        }
                        (None, Some(page)) => {
                            w.step = Some(Step::LookupForDelete { page: Some(page) });
                            requeued.push(id);
                        }
                        (None, None) => {
                            writes.push((mailbox.clone(), member.clone(), None));
                            self.notes
                                .push((member, applied(ev, &mailbox, "lookup", "already_gone")));
                            finished.push(id);
                        }
                    }
                }
                (Ok(resp), Step::Create(tx)) => {
                    let eid = resp
                        .body
                        .get("id")
                        .and_then(|v| v.as_str())
                        .map(str::to_string);
                    writes.push((
                        mailbox.clone(),
                        member.clone(),
                        Some(Copy {
                            user: w.user.clone(),
                            event_id: eid,
                            rev: ev.revision,
                            tx,
                        }),
                    ));
                    self.report.creates += 1;
                    self.f.written("create", ev, &mailbox);
                    self.notes
                        .push((member, applied(ev, &mailbox, "create", "created")));
                    finished.push(id);
                }
                (Ok(_), Step::Update(eid)) => {
                    writes.push((
                        mailbox.clone(),
                        member.clone(),
                        Some(Copy {
                            user: w.user.clone(),
                            event_id: Some(eid),
                            rev: ev.revision,
                            tx: None,
                        }),
                    ));
                    self.report.updates += 1;
                    self.f.written("update", ev, &mailbox);
                    self.notes
                        .push((member, applied(ev, &mailbox, "update", "updated")));
                    finished.push(id);
                }
                (Ok(_), Step::Delete(_)) => {
                    writes.push((mailbox.clone(), member.clone(), None));
                    self.report.deletes += 1;
                    self.f.written("delete", ev, &mailbox);
                    self.notes
                        .push((member, applied(ev, &mailbox, "delete", "deleted")));
                    finished.push(id);
                }
                (Err(e), step) => {
                    w.first_failure.get_or_insert_with(Timestamp::now);
                    w.last_failure = Some(Timestamp::now());
                    match (&e.class, &step) {
                        (ErrorClass::ItemGone, Step::Delete(_)) => {
                            writes.push((mailbox.clone(), member.clone(), None));
                            self.notes
                                .push((member, applied(ev, &mailbox, "delete", "already_gone")));
                            finished.push(id);
                        }
                        (ErrorClass::ItemGone, Step::Update(_)) => {
                            // The copy was deleted in Outlook: create it again.
                            w.step = Some(Step::Create(None));
                            w.attempts = 0;
                            requeued.push(id);
                        }
                        (ErrorClass::Retryable { .. } | ErrorClass::RefreshToken, _)
                            if w.attempts < max_attempts =>
                        {
                            if matches!(e.class, ErrorClass::RefreshToken) {
                                self.f.graph.forget_token(&w.company);
                            }
                            // A create that failed ambiguously (a timeout, a dropped connection, a
                            // 5xx) may have happened: look for the copy before creating again,
                            // whatever Graph does with a repeated transactionId. A 429 or 401 was
                            // refused outright.
                            if let Step::Create(tx) = &step
                                && !matches!(e.status, Some(429) | Some(401))
                            {
                                w.step = Some(Step::Lookup {
                                    then_create_tx: tx.clone(),
                                    page: None,
                                });
                            }
                            if e.status == Some(429) {
                                self.f.metrics.graph_throttled.inc();
                            }
                            let slot = waits
                                .entry((w.company.clone(), mailbox.clone()))
                                .or_insert(None);
                            if let Some(a) = e.retry_after {
                                *slot = Some(slot.map_or(a, |s| s.max(a)));
                            }
                            self.notes.push((
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
                            requeued.push(id);
                        }
                        _ => {
                            if e.status == Some(429) {
                                self.f.metrics.graph_throttled.inc();
                            }
                            w.reason = match &e.class {
                                ErrorClass::Retryable { .. } | ErrorClass::RefreshToken => {
                                    "retries_exhausted"
                                }
                                ErrorClass::Mailbox(p) => p.code(),
                                ErrorClass::Credentials(p) => p.code(),
                                _ => "graph_rejected",
                            };
                            w.error = Some(e);
                            failed.push(id);
                        }
                    }
                }
            }
        }
        // The copies are recorded (and these changes finished) in `settle`, in one round trip
        // for everything that finished meanwhile, so a finished batch never waits on Redis.
        self.writes.extend(writes);
        // Dead-letter what failed for good, with Graph's words.
        let mut dead = Vec::new();
        for id in failed {
            let outcome = self.dead_letter(id).await;
            let w = &self.work[&id];
            let c = &self.held[&w.member].claimed;
            let ev = c.event.as_ref().expect("event");
            let (kind, reason) = if outcome == Outcome::Settled {
                self.report.dead_letters += 1;
                (ledger::Outcome::DeadLettered, w.reason)
            } else {
                (ledger::Outcome::Retrying, "dead_letter_publish_failed")
            };
            self.notes.push((
                c.member.clone(),
                graph_entry(
                    ev.revision,
                    &w.mailbox,
                    w.step.as_ref().expect("prepared"),
                    kind,
                    reason,
                    w.error.as_ref().expect("error"),
                    w.attempts,
                ),
            ));
            self.feedback(id).await;
            dead.push((id, outcome));
        }
        // Free the mailboxes of this batch; delay the ones that must wait.
        let touched: HashSet<(String, String)> = items
            .iter()
            .map(|id| (self.work[id].company.clone(), self.work[id].mailbox.clone()))
            .collect();
        let cap = Duration::from_secs(self.f.cfg.retry.max_retry_after_seconds);
        for key in touched {
            let b = self.boxes.get_mut(&key).expect("touched");
            b.busy = false;
            b.oldest = Instant::now();
            if let Some(wait) = waits.get(&key) {
                // Honour Retry-After (never retry sooner); else backoff with jitter.
                let d = wait
                    .map(|d| d.min(cap))
                    .unwrap_or_else(|| b.backoff.next().unwrap_or(cap));
                self.f
                    .metrics
                    .retry_after_wait_seconds
                    .inc_by(d.as_secs_f64());
                debug!(company = %key.0, mailbox = %key.1, wait_ms = d.as_millis() as u64, "flush: mailbox waits before retrying");
                b.not_before = Instant::now() + d;
            }
        }
        for id in requeued.into_iter().rev() {
            let w = &self.work[&id];
            let key = (w.company.clone(), w.mailbox.clone());
            if matches!(w.step, Some(Step::Create(None))) {
                self.unrecorded.push(id);
            }
            let b = self.boxes.get_mut(&key).expect("box");
            b.pending.push_front(id);
            b.oldest = b.oldest.min(Instant::now());
        }
        self.written.extend(finished);
        for (id, outcome) in dead {
            self.finish(id, outcome);
        }
    }

    /// A mailbox problem flips the user to auth_failed, with the reason.
    async fn feedback(&mut self, id: u64) {
        let w = &self.work[&id];
        if let Some(e) = &w.error
            && matches!(e.class, ErrorClass::Mailbox(_))
        {
            let _ = self
                .f
                .directory
                .record_sync(&w.company, &w.user, Err((w.reason, &e.message)))
                .await;
        }
    }

    /// A change is over; its schedule settles when its last change is.
    fn finish(&mut self, id: u64, outcome: Outcome) {
        let Some(w) = self.work.remove(&id) else {
            return;
        };
        let h = self.held.get_mut(&w.member).expect("held");
        h.open -= 1;
        h.outcome = worst(h.outcome, outcome);
        if h.open == 0 {
            self.finish_member(w.member);
        }
    }

    fn finish_member(&mut self, member: u64) {
        let h = self.held.remove(&member).expect("held");
        self.claims
            .lock()
            .expect("claims")
            .remove(&h.claimed.member);
        match h.outcome {
            Outcome::Settled => self.done.push(h.claimed.member.clone()),
            Outcome::Unsettled => self.again.push(h.claimed.member.clone()),
        }
    }

    /// Gives every open change back (Redis failed, or shutdown): their schedules are due again.
    fn abandon(&mut self) {
        let ids: Vec<u64> = self
            .boxes
            .values_mut()
            .filter(|b| !b.busy)
            .flat_map(|b| {
                b.pending
                    .drain(..)
                    .chain(b.unprepared.drain(..))
                    .collect::<Vec<_>>()
            })
            .collect();
        for id in ids {
            self.finish(id, Outcome::Unsettled);
        }
    }

    /// Completes or releases settled schedules and writes the ledger (one round trip each).
    async fn settle(&mut self) {
        let f = self.f;
        if !self.written.is_empty() || !self.writes.is_empty() {
            let writes = std::mem::take(&mut self.writes);
            let outcome = match f.copies.write_many(&writes).await {
                Ok(()) => Outcome::Settled,
                Err(e) => {
                    warn!(error = %e, "flush: copies not recorded; those schedules are retried");
                    Outcome::Unsettled
                }
            };
            // The users whose mailbox took a write: their last sync time (at most every 30 s).
            let now = Instant::now();
            let mut synced: HashSet<(String, String)> = HashSet::new();
            for id in &self.written {
                let w = &self.work[id];
                let key = (w.company.clone(), w.user.clone());
                if self
                    .synced_at
                    .get(&key)
                    .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(30))
                {
                    synced.insert(key);
                }
            }
            for id in std::mem::take(&mut self.written) {
                self.finish(id, outcome);
            }
            if outcome == Outcome::Settled {
                for key in synced {
                    let _ = f.directory.record_sync(&key.0, &key.1, Ok(())).await;
                    self.synced_at.insert(key, now);
                }
            }
        }
        if !self.done.is_empty() {
            match f.windows.complete(&f.token, &self.done).await {
                Ok(_) => {
                    f.metrics.schedules_flushed.inc_by(self.done.len() as u64);
                    self.done.clear();
                }
                Err(e) => warn!(error = %e, "flush: claims not completed; retried"),
            }
        }
        if !self.again.is_empty() {
            match f
                .windows
                .release(&f.token, &self.again, Duration::from_millis(500))
                .await
            {
                Ok(_) => self.again.clear(),
                Err(e) => warn!(error = %e, "flush: claims not released; they expire"),
            }
        }
        if !self.notes.is_empty() {
            let notes = std::mem::take(&mut self.notes);
            if let Err(e) = f.ledger.record(&notes).await {
                warn!(error = %e, "flush: the sync ledger could not be written");
            }
        }
        self.release_idle().await;
    }

    async fn dead_letter(&mut self, id: u64) -> Outcome {
        let w = &self.work[&id];
        let c = &self.held[&w.member].claimed;
        let company = &w.company;
        let ev = c.event.as_ref().expect("event");
        let e = w.error.as_ref().expect("an error");
        let mailbox = &w.mailbox;
        let dl = DeadLetter {
            stage: "flush",
            reason: w.reason.to_string(),
            error: e.to_string(),
            company_id: Some(company.clone()),
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
        let published = match self.f.publisher().await {
            Ok(p) => {
                dl.publish(&p, &self.f.cfg.amqp.dead_letter_exchange, key, &props, raw)
                    .await
            }
            Err(e) => Err(e),
        };
        match published {
            Ok(()) => {
                warn!(company = %company, schedule = %ev.schedule_id, mailbox = %mailbox, revision = ev.revision, reason = w.reason, status = ?e.status, code = %e.code, request_id = ?e.request_id, "flush: change dead-lettered");
                let m = &self.f.metrics;
                m.dead_letters
                    .get_or_create(&vec![
                        ("stage", "flush".into()),
                        ("reason", w.reason.into()),
                    ])
                    .inc();
                let kind = match e.class {
                    ErrorClass::Credentials(_) => "credentials",
                    ErrorClass::Mailbox(_) => "mailbox",
                    ErrorClass::Retryable { .. } | ErrorClass::RefreshToken => "retries_exhausted",
                    _ => "rejected",
                };
                m.company_failures
                    .get_or_create(&vec![("company", company.clone()), ("kind", kind.into())])
                    .inc();
                Outcome::Settled
            }
            Err(err) => {
                warn!(company = %company, schedule = %ev.schedule_id, mailbox = %mailbox, error = %err, "flush: dead-letter publish failed; the schedule will be retried");
                Outcome::Unsettled
            }
        }
    }
}

impl Flusher {
    fn backoff_schedule(&self) -> backon::ExponentialBackoff {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.cfg.retry.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(self.cfg.retry.max_backoff_ms))
            .with_jitter()
            .without_max_times()
            .build()
    }

    pub(crate) fn written(&self, op: &'static str, ev: &ScheduleEvent, mailbox: &str) {
        self.metrics
            .graph_writes
            .get_or_create(&Metrics::label("op", op))
            .inc();
        let latency = Timestamp::now().as_millisecond() - ev.occurred_at.as_millisecond();
        self.metrics
            .sync_latency_seconds
            .observe(latency.max(0) as f64 / 1000.0);
        // One line per write (debug): what changed where, for tracing a schedule's sync.
        debug!(
            company = %ev.company_id,
            schedule = %ev.schedule_id,
            mailbox,
            revision = ev.revision,
            op,
            latency_ms = latency.max(0),
            "flush: copy written"
        );
    }
}

fn worst(a: Outcome, b: Outcome) -> Outcome {
    use Outcome::*;
    match (a, b) {
        (Unsettled, _) | (_, Unsettled) => Unsettled,
        _ => Settled,
    }
}

/// The next batch to send, from one company: the fullest ready mailbox's 20 if it has that many,
/// else short queues (that have lingered, or when nothing more is coming) packed together to
/// fill the batch. A mailbox is never in two batches in flight. Marks the mailboxes busy.
fn next_batch(
    boxes: &mut BTreeMap<(String, String), Mailbox>,
    batch_size: usize,
    linger: Duration,
    recorded: &dyn Fn(u64) -> bool,
) -> Option<(String, Vec<u64>)> {
    let now = Instant::now();
    let ready = |b: &Mailbox| {
        b.lease.is_some()
            && !b.busy
            && b.not_before <= now
            && !b.pending.is_empty()
            && b.pending.iter().take(batch_size).all(|id| recorded(*id))
    };
    // A full batch for one mailbox first.
    if let Some(key) = boxes
        .iter()
        .filter(|(_, b)| ready(b) && b.pending.len() >= batch_size)
        .max_by_key(|(_, b)| b.pending.len())
        .map(|(k, _)| k.clone())
    {
        let b = boxes.get_mut(&key).expect("ready");
        b.busy = true;
        let items: Vec<u64> = b.pending.drain(..batch_size).collect();
        b.oldest = now;
        return Some((key.0, items));
    }
    // Then short queues packed together, once they fill a batch or the longest-waiting has
    // waited `LINGER` (other mailboxes' batches finishing meanwhile add to the pack).
    let mut short: Vec<(&(String, String), usize)> = boxes
        .iter()
        .filter(|(_, b)| ready(b))
        .map(|(k, b)| (k, b.pending.len()))
        .collect();
    let total: usize = short.iter().map(|(_, n)| n).sum();
    let earliest = short.iter().map(|(k, _)| boxes[*k].oldest).min()?;
    if total < batch_size && now < earliest + linger {
        return None;
    }
    short.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let company = short[0].0.0.clone();
    // Fill the batch: whole queues first, then the front of the next one (its rest waits for
    // this batch to finish: a mailbox is in one batch in flight at most).
    let mut take: Vec<((String, String), usize)> = Vec::new();
    let mut size = 0;
    for (k, n) in short {
        if k.0 != company || size == batch_size {
            continue;
        }
        let n = n.min(batch_size - size);
        take.push((k.clone(), n));
        size += n;
    }
    let mut items = Vec::with_capacity(size);
    for (k, n) in take {
        let b = boxes.get_mut(&k).expect("ready");
        b.busy = true;
        items.extend(b.pending.drain(..n));
    }
    Some((company, items))
}

/// The first step of a change, from its copy as it is now; `None` if there is nothing to do.
fn first_step(kind: &OpKind, c: &Claimed, copy: Option<Copy>) -> Option<Step> {
    let ev = c.event.as_ref()?;
    let born_here = c.staged.as_ref().is_some_and(|s| s.born_here);
    match (kind, copy) {
        (OpKind::Upsert, Some(copy)) if copy.event_id.is_some() && copy.rev >= ev.revision => None,
        (OpKind::Upsert, Some(copy)) if copy.event_id.is_some() => {
            Some(Step::Update(copy.event_id.expect("checked")))
        }
        // An earlier create may have happened: look first, reuse its transactionId.
        (OpKind::Upsert, Some(intent)) => Some(Step::Lookup {
            then_create_tx: intent.tx,
            page: None,
        }),
        (OpKind::Upsert, None) if born_here => Some(Step::Create(None)),
        (OpKind::Upsert, None) => Some(Step::Lookup {
            then_create_tx: None,
            page: None,
        }),
        (OpKind::Delete, Some(copy)) if copy.event_id.is_some() => {
            Some(Step::Delete(copy.event_id.expect("checked")))
        }
        (OpKind::Delete, Some(_)) => Some(Step::LookupForDelete { page: None }),
        (OpKind::Delete, None) if !born_here => Some(Step::LookupForDelete { page: None }),
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

fn request(
    id: u64,
    step: &Step,
    ev: &ScheduleEvent,
    mailbox: &str,
    opts: &MappingOptions<'_>,
) -> GraphRequest {
    let id = id.to_string();
    let schedule = || ev.schedule.as_ref().expect("upserts carry the schedule");
    let (company, sched) = (ev.company_id.as_str(), ev.schedule_id.as_str());
    match step {
        Step::Lookup { page, .. } | Step::LookupForDelete { page } => {
            requests::lookup(id, mailbox, company, sched, page.as_deref())
        }
        Step::Create(tx) => requests::create(
            id,
            mailbox,
            schedule(),
            company,
            sched,
            tx.as_deref().expect("intent recorded before the create"),
            opts,
        ),
        Step::Update(event_id) => {
            requests::update(id, mailbox, event_id, schedule(), company, sched, opts)
        }
        Step::Delete(event_id) => requests::delete(id, mailbox, event_id),
    }
}
