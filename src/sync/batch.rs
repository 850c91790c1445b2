//! The steps a change goes through, the per-mailbox queues, and the choice of the next `$batch`.
//!
//! Per mailbox at most one `$batch` is in flight (Graph runs at most 4 items of a batch at once,
//! so no mailbox ever sees more than 4 requests in flight). A queue of 20 or more gets a batch of
//! its own; shorter queues wait up to a linger for more work, then share a batch with other short
//! queues of the same company, so the request count stays near ⌈writes / 20⌉.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::plan::OpKind;
use crate::event::ScheduleEvent;
use crate::graph::client::GraphRequest;
use crate::graph::mapping::MappingOptions;
use crate::graph::requests;
use crate::store::lease::Given;
use crate::store::lease::Held as HeldLeases;
use crate::store::pace::{self, Budget};
use crate::store::{CopyRecord, MailboxLeases};

/// A request a change can send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Look for the copy by its tag (`page`: the next page of an earlier look), then update it,
    /// or create it (with this transactionId, else after recording an intent).
    Lookup {
        then_create_tx: Option<String>,
        page: Option<String>,
    },
    /// Look for the copy by its tag, then delete it.
    LookupForDelete {
        page: Option<String>,
    },
    /// Create the copy with its recorded transactionId.
    Create {
        tx: String,
    },
    Update {
        event_id: String,
    },
    Delete {
        event_id: String,
    },
}

impl Request {
    /// The ledger's name for it.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Lookup { .. } | Request::LookupForDelete { .. } => "lookup",
            Request::Create { .. } => "create",
            Request::Update { .. } => "update",
            Request::Delete { .. } => "delete",
        }
    }

    /// The Graph request for this step of `ev`'s copy in `mailbox`.
    pub fn to_graph(
        &self,
        id: u64,
        ev: &ScheduleEvent,
        mailbox: &str,
        opts: &MappingOptions<'_>,
    ) -> GraphRequest {
        let id = id.to_string();
        let (company, schedule_id) = (ev.company_id.as_str(), ev.schedule_id.as_str());
        // Upserts are planned only from events that carry the schedule (decoded and checked).
        let schedule = || {
            ev.schedule
                .as_ref()
                .expect("an upsert's event carries the schedule")
        };
        match self {
            Request::Lookup { page, .. } | Request::LookupForDelete { page } => {
                requests::lookup(id, mailbox, company, schedule_id, page.as_deref())
            }
            Request::Create { tx } => {
                requests::create(id, mailbox, schedule(), company, schedule_id, tx, opts)
            }
            Request::Update { event_id } => requests::update(
                id,
                mailbox,
                event_id,
                schedule(),
                company,
                schedule_id,
                opts,
            ),
            Request::Delete { event_id } => requests::delete(id, mailbox, event_id),
        }
    }
}

/// Where a change stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Not yet re-read under its mailbox's lease.
    Unprepared,
    /// A create whose transactionId must be recorded (the write-ahead intent) before it is sent.
    NeedsIntent,
    /// Ready to send.
    Ready(Request),
}

/// The first step of a change, from its copy as re-read under the lease; `None` if there is
/// nothing to do. `born_here`: the schedule's creation was staged through this Redis, so no
/// copy of it can exist unknown to the mapping.
pub fn first_step(
    kind: OpKind,
    revision: u64,
    born_here: bool,
    copy: Option<CopyRecord>,
) -> Option<Step> {
    let ready = |r| Some(Step::Ready(r));
    match (kind, copy) {
        (OpKind::Upsert, Some(copy)) if copy.is_at_least(revision) => None,
        (
            OpKind::Upsert,
            Some(CopyRecord {
                event_id: Some(event_id),
                ..
            }),
        ) => ready(Request::Update { event_id }),
        // An earlier create may have happened: look first, reuse its transactionId.
        (OpKind::Upsert, Some(intent)) => ready(Request::Lookup {
            then_create_tx: intent.tx,
            page: None,
        }),
        (OpKind::Upsert, None) if born_here => Some(Step::NeedsIntent),
        (OpKind::Upsert, None) => ready(Request::Lookup {
            then_create_tx: None,
            page: None,
        }),
        (
            OpKind::Delete,
            Some(CopyRecord {
                event_id: Some(event_id),
                ..
            }),
        ) => ready(Request::Delete { event_id }),
        (OpKind::Delete, Some(_)) => ready(Request::LookupForDelete { page: None }),
        (OpKind::Delete, None) if !born_here => ready(Request::LookupForDelete { page: None }),
        (OpKind::Delete, None) => None,
    }
}

/// (company, mailbox).
pub type MailboxKey = (String, String);

/// A mailbox's queue of changes (work ids).
pub struct Mailbox {
    /// Re-read under the current lease, in the order they go out.
    pub pending: VecDeque<u64>,
    /// Not yet re-read under the current lease.
    pub unprepared: Vec<u64>,
    /// This worker's lease token while it holds the mailbox.
    pub lease: Option<String>,
    /// A batch of this mailbox is in flight.
    pub busy: bool,
    /// Nothing is sent before this (`Retry-After`, backoff).
    pub not_before: Instant,
    /// When to try for the lease again (another worker held it).
    pub next_lease_try: Instant,
    /// Since when the oldest queued change waits (for the linger).
    pub oldest: Instant,
    pub backoff: backon::ExponentialBackoff,
    /// The mailbox's paced request budget while this worker holds its lease (`store::pace`).
    pub tat_us: Option<u64>,
}

impl Mailbox {
    pub fn new(now: Instant, backoff: backon::ExponentialBackoff) -> Mailbox {
        Mailbox {
            pending: VecDeque::new(),
            unprepared: Vec::new(),
            lease: None,
            busy: false,
            not_before: now,
            next_lease_try: now,
            oldest: now,
            backoff,
            tat_us: None,
        }
    }

    pub fn queued(&self) -> usize {
        self.pending.len() + self.unprepared.len()
    }

    pub fn is_idle(&self) -> bool {
        self.lease.is_none() && self.queued() == 0 && !self.busy
    }
}

/// The next batch to send, from one company: the fullest ready mailbox's `batch_size` if it has
/// that many, else short queues (that have lingered, or that fill a batch together) packed
/// together. A mailbox is never in two batches in flight; the chosen ones are marked busy.
/// `sendable(id)`: the change's step is ready to send (a create's intent is recorded).
pub fn next_batch(
    boxes: &mut BTreeMap<MailboxKey, Mailbox>,
    batch_size: usize,
    linger: Duration,
    sendable: &dyn Fn(u64) -> bool,
) -> Option<(String, Vec<u64>)> {
    let now = Instant::now();
    let ready = |b: &Mailbox| {
        b.lease.is_some()
            && !b.busy
            && b.not_before <= now
            && !b.pending.is_empty()
            && b.pending.iter().take(batch_size).all(|id| sendable(*id))
    };
    // A full batch for one mailbox first.
    if let Some(key) = boxes
        .iter()
        .filter(|(_, b)| ready(b) && b.pending.len() >= batch_size)
        .max_by_key(|(_, b)| b.pending.len())
        .map(|(k, _)| k.clone())
    {
        let b = boxes.get_mut(&key)?;
        b.busy = true;
        let items: Vec<u64> = b.pending.drain(..batch_size).collect();
        b.oldest = now;
        return Some((key.0, items));
    }
    // Then short queues packed together, once they fill a batch or the longest-waiting has
    // waited `linger` (other mailboxes' batches finishing meanwhile add to the pack).
    let mut short: Vec<(&MailboxKey, usize, Instant)> = boxes
        .iter()
        .filter(|(_, b)| ready(b))
        .map(|(k, b)| (k, b.pending.len(), b.oldest))
        .collect();
    let total: usize = short.iter().map(|(_, n, _)| n).sum();
    let earliest = short.iter().map(|(_, _, oldest)| *oldest).min()?;
    if total < batch_size && now < earliest + linger {
        return None;
    }
    short.sort_by_key(|(_, n, _)| std::cmp::Reverse(*n));
    let company = short[0].0.0.clone();
    // Fill the batch: whole queues first, then the front of the next one (its rest waits for
    // this batch to finish: a mailbox is in one batch in flight at most).
    let mut take: Vec<(MailboxKey, usize)> = Vec::new();
    let mut size = 0;
    for (k, n, _) in short {
        if k.0 != company || size == batch_size {
            continue;
        }
        let n = n.min(batch_size - size);
        take.push((k.clone(), n));
        size += n;
    }
    let mut items = Vec::with_capacity(size);
    for (k, n) in take {
        if let Some(b) = boxes.get_mut(&k) {
            b.busy = true;
            items.extend(b.pending.drain(..n));
        }
    }
    Some((company, items))
}

/// Every mailbox this worker has changes for, and the mailbox leases it holds.
pub struct Queues {
    boxes: BTreeMap<MailboxKey, Mailbox>,
    /// The leases held (lease key → token), renewed by the flush's renewer.
    held: HeldLeases,
    /// Graph's request budget per mailbox, which every batch is paced within.
    budget: Budget,
    /// Time mailboxes were set to wait for their budget since it was last taken.
    paced: Duration,
}

impl Queues {
    pub fn new(budget: Budget) -> Queues {
        Queues {
            boxes: BTreeMap::new(),
            held: Arc::new(std::sync::Mutex::new(BTreeMap::new())),
            budget,
            paced: Duration::ZERO,
        }
    }

    /// The time mailboxes were set to wait for their budget since the last call.
    pub fn take_paced(&mut self) -> Duration {
        std::mem::take(&mut self.paced)
    }

    /// Changes queued in mailboxes that wait (`Retry-After`, backoff, or their budget).
    pub fn waiting(&self, now: Instant) -> usize {
        self.boxes
            .values()
            .filter(|b| b.not_before > now)
            .map(Mailbox::queued)
            .sum()
    }

    /// The held leases, for the renewer.
    pub fn held_leases(&self) -> HeldLeases {
        self.held.clone()
    }

    /// Queues a new change, to be re-read under the mailbox's next lease.
    pub fn enqueue(
        &mut self,
        key: MailboxKey,
        id: u64,
        now: Instant,
        backoff: impl FnOnce() -> backon::ExponentialBackoff,
    ) {
        let b = self
            .boxes
            .entry(key)
            .or_insert_with(|| Mailbox::new(now, backoff()));
        if b.queued() == 0 {
            b.oldest = now;
        }
        b.unprepared.push(id);
    }

    /// The unleased mailboxes worth leasing now: as many as `free` batch slots can send at
    /// once (a full queue takes a slot; short queues that have lingered share one), in random
    /// order so workers sharing mailboxes spread over them. A lease is never taken just to sit
    /// on it.
    pub fn to_lease(
        &self,
        free: usize,
        batch_size: usize,
        linger: Duration,
        now: Instant,
    ) -> Vec<MailboxKey> {
        let mut open: Vec<(&MailboxKey, usize, bool)> = self
            .boxes
            .iter()
            .filter(|(_, b)| {
                b.lease.is_none() && !b.busy && b.next_lease_try <= now && b.not_before <= now
            })
            .map(|(k, b)| (k, b.queued(), now >= b.oldest + linger))
            .filter(|(_, q, _)| *q > 0)
            .collect();
        {
            use rand::seq::SliceRandom;
            open.shuffle(&mut rand::rng());
        }
        let mut picked: Vec<MailboxKey> = open
            .iter()
            .filter(|(_, q, _)| *q >= batch_size)
            .take(free)
            .map(|(k, _, _)| (*k).clone())
            .collect();
        let mut room = (free - picked.len()) * batch_size;
        let short = || open.iter().filter(|(_, q, _)| *q < batch_size);
        let short_total: usize = short().map(|(_, q, _)| q).sum();
        for (k, q, lingered) in short() {
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

    /// Tries to lease `candidates` (one round trip per company); a leased mailbox's queue is
    /// re-read under the new lease. Returns how many were leased.
    pub async fn lease(
        &mut self,
        leases: &MailboxLeases,
        candidates: &[MailboxKey],
    ) -> Result<usize, redis::RedisError> {
        let mut by_company: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (c, m) in candidates {
            by_company.entry(c).or_default().push(m.clone());
        }
        let now = Instant::now();
        let mut leased = 0;
        for (company, mailboxes) in by_company {
            let tokens = leases.try_acquire_many(company, &mailboxes).await?;
            for (m, t) in mailboxes.into_iter().zip(tokens) {
                let lease_key = leases.key(company, &m);
                let Some(b) = self.boxes.get_mut(&(company.to_string(), m)) else {
                    continue;
                };
                match t {
                    Some(taken) => {
                        leased += 1;
                        self.held
                            .lock()
                            .expect("leases")
                            .insert(lease_key, taken.token.clone());
                        b.lease = Some(taken.token);
                        b.tat_us = taken.tat_us;
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
        Ok(leased)
    }

    /// The changes of leased mailboxes that are still to be re-read under the lease.
    pub fn take_unprepared(&mut self) -> Vec<u64> {
        self.boxes
            .values_mut()
            .filter(|b| b.lease.is_some() && !b.unprepared.is_empty())
            .flat_map(|b| std::mem::take(&mut b.unprepared))
            .collect()
    }

    /// Gives a change back to be re-read under a later lease.
    pub fn unprepare(&mut self, key: &MailboxKey, id: u64) {
        if let Some(b) = self.boxes.get_mut(key) {
            b.unprepared.push(id);
        }
    }

    /// Queues a re-read change to go out.
    pub fn push(&mut self, key: &MailboxKey, id: u64) {
        if let Some(b) = self.boxes.get_mut(key) {
            b.pending.push_back(id);
        }
    }

    /// Puts a change back at the front of its mailbox's queue.
    pub fn push_front(&mut self, key: &MailboxKey, id: u64) {
        if let Some(b) = self.boxes.get_mut(key) {
            b.pending.push_front(id);
            b.oldest = b.oldest.min(Instant::now());
        }
    }

    /// The change was re-read under its mailbox's current lease and waits to go out.
    pub fn is_pending_under_lease(&self, key: &MailboxKey, id: u64) -> bool {
        self.boxes
            .get(key)
            .is_some_and(|b| b.lease.is_some() && b.pending.contains(&id))
    }

    /// See [`next_batch`]; every mailbox in it is paced within its request budget: one whose
    /// budget is spent waits (holding its lease) until its next requests fit.
    pub fn next_batch(
        &mut self,
        batch_size: usize,
        linger: Duration,
        sendable: &dyn Fn(u64) -> bool,
    ) -> Option<(String, Vec<u64>)> {
        let now_us = pace::now_us();
        let now = Instant::now();
        for b in self.boxes.values_mut() {
            if b.lease.is_none() || b.busy || b.pending.is_empty() || b.not_before > now {
                continue;
            }
            let n = b.pending.len().min(batch_size);
            if let Err(wait) = self.budget.reserve(b.tat_us, now_us, n) {
                b.not_before = now + wait;
                self.paced += wait;
            }
        }
        let before: BTreeMap<MailboxKey, usize> = self
            .boxes
            .iter()
            .filter(|(_, b)| !b.busy)
            .map(|(k, b)| (k.clone(), b.pending.len()))
            .collect();
        let picked = next_batch(&mut self.boxes, batch_size, linger, sendable)?;
        for (key, was) in before {
            if let Some(b) = self.boxes.get_mut(&key).filter(|b| b.busy) {
                let n = was - b.pending.len();
                // Checked above: it fits (or the mailbox would not have been ready).
                b.tat_us = self.budget.reserve(b.tat_us, now_us, n).ok().or(b.tat_us);
            }
        }
        Some(picked)
    }

    /// Frees the mailboxes of a finished batch. Those in `waits` wait out their `Retry-After`
    /// (capped at `cap`), else their backoff, before sending again; returns the waits taken.
    pub fn free(
        &mut self,
        touched: impl IntoIterator<Item = MailboxKey>,
        waits: &BTreeMap<MailboxKey, Option<Duration>>,
        cap: Duration,
    ) -> Vec<(MailboxKey, Duration)> {
        let now = Instant::now();
        let mut waited = Vec::new();
        for key in touched {
            let Some(b) = self.boxes.get_mut(&key) else {
                continue;
            };
            b.busy = false;
            b.oldest = now;
            if let Some(wait) = waits.get(&key) {
                // Honour Retry-After (never retry sooner); else backoff with jitter.
                let d = wait
                    .map(|d| d.min(cap))
                    .unwrap_or_else(|| b.backoff.next().unwrap_or(cap));
                b.not_before = now + d;
                waited.push((key, d));
            }
        }
        waited
    }

    /// Gives back the leases of mailboxes with nothing in flight and no Retry-After to wait out
    /// (what they still have queued is re-read under their next lease), and forgets idle
    /// mailboxes. Returns how many leases were given back.
    pub async fn release_idle(&mut self, leases: &MailboxLeases) -> usize {
        let mut release: BTreeMap<String, Vec<Given>> = BTreeMap::new();
        let now = Instant::now();
        for ((company, mailbox), b) in self.boxes.iter_mut() {
            if !b.busy
                && b.not_before <= now
                && let Some(t) = b.lease.take()
            {
                release.entry(company.clone()).or_default().push((
                    mailbox.clone(),
                    t,
                    b.tat_us.take(),
                ));
            }
        }
        let mut n = 0;
        for (company, given) in release {
            {
                let mut held = self.held.lock().expect("leases");
                for (m, _, _) in &given {
                    held.remove(&leases.key(&company, m));
                }
            }
            n += given.len();
            leases.release_many(&company, &given).await;
        }
        self.boxes.retain(|_, b| !b.is_idle());
        n
    }

    /// When a queue may next be ready (no later than `wake`).
    pub fn next_wake(&self, mut wake: Instant, linger: Duration) -> Instant {
        for b in self.boxes.values().filter(|b| !b.busy) {
            if b.lease.is_none() && b.queued() > 0 {
                wake = wake.min(b.next_lease_try);
            } else if !b.pending.is_empty() {
                wake = wake.min(b.not_before.max(b.oldest + linger));
            }
        }
        wake
    }

    /// Every queued change of mailboxes with nothing in flight (to give them back).
    pub fn drain_waiting(&mut self) -> Vec<u64> {
        self.boxes
            .values_mut()
            .filter(|b| !b.busy)
            .flat_map(|b| {
                b.pending
                    .drain(..)
                    .chain(b.unprepared.drain(..))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(event_id: Option<&str>, rev: u64, tx: Option<&str>) -> Option<CopyRecord> {
        Some(CopyRecord {
            user: "u-1".into(),
            event_id: event_id.map(str::to_string),
            rev,
            tx: tx.map(str::to_string),
            ..CopyRecord::default()
        })
    }

    #[test]
    fn the_first_step_follows_from_the_copy_and_whether_the_schedule_was_born_here() {
        use OpKind::*;
        let lookup = |tx: Option<&str>| {
            Some(Step::Ready(Request::Lookup {
                then_create_tx: tx.map(str::to_string),
                page: None,
            }))
        };
        let cases: Vec<(OpKind, bool, Option<CopyRecord>, Option<Step>)> = vec![
            (Upsert, true, copy(Some("E"), 3, None), None),
            (Upsert, true, copy(Some("E"), 5, None), None),
            (
                Upsert,
                true,
                copy(Some("E"), 2, None),
                Some(Step::Ready(Request::Update {
                    event_id: "E".into(),
                })),
            ),
            (Upsert, true, copy(None, 2, Some("T")), lookup(Some("T"))),
            (Upsert, true, None, Some(Step::NeedsIntent)),
            (Upsert, false, None, lookup(None)),
            (
                Delete,
                true,
                copy(Some("E"), 2, None),
                Some(Step::Ready(Request::Delete {
                    event_id: "E".into(),
                })),
            ),
            (
                Delete,
                true,
                copy(None, 2, Some("T")),
                Some(Step::Ready(Request::LookupForDelete { page: None })),
            ),
            (
                Delete,
                false,
                None,
                Some(Step::Ready(Request::LookupForDelete { page: None })),
            ),
            (Delete, true, None, None),
        ];
        for (kind, born, c, want) in cases {
            assert_eq!(
                first_step(kind, 3, born, c.clone()),
                want,
                "{kind:?} born={born} {c:?}"
            );
        }
    }

    fn boxes(queues: &[(&str, usize, bool)]) -> BTreeMap<MailboxKey, Mailbox> {
        let now = Instant::now() - Duration::from_secs(1);
        let mut next = 0;
        queues
            .iter()
            .map(|(mb, n, leased)| {
                let mut b = Mailbox::new(
                    now,
                    crate::runtime::schedule(Duration::ZERO, Duration::ZERO),
                );
                b.lease = leased.then(|| "t".to_string());
                for _ in 0..*n {
                    next += 1;
                    b.pending.push_back(next);
                }
                (("c".to_string(), mb.to_string()), b)
            })
            .collect()
    }

    #[test]
    fn a_full_queue_gets_a_batch_of_its_own_and_short_ones_share_one() {
        let mut b = boxes(&[
            ("a", 25, true),
            ("b", 3, true),
            ("c", 4, true),
            ("d", 5, false),
        ]);
        let all = |_| true;
        let (_, first) = next_batch(&mut b, 20, Duration::ZERO, &all).unwrap();
        assert_eq!(first, (1..=20).collect::<Vec<u64>>(), "a's first 20");
        // a is busy now; the short queues (and nothing of the unleased d) share the next one.
        let (_, second) = next_batch(&mut b, 20, Duration::ZERO, &all).unwrap();
        assert_eq!(second.len(), 7);
        assert!(b.values().filter(|m| m.busy).count() == 3);
        assert!(
            next_batch(&mut b, 20, Duration::ZERO, &all).is_none(),
            "every leased mailbox is busy"
        );
    }

    #[test]
    fn a_create_without_its_recorded_intent_holds_its_mailbox_back() {
        let mut b = boxes(&[("a", 3, true)]);
        assert!(next_batch(&mut b, 20, Duration::ZERO, &|id| id != 2).is_none());
        assert!(next_batch(&mut b, 20, Duration::ZERO, &|_| true).is_some());
    }

    #[test]
    fn short_queues_linger_for_more_work_before_going_out_half_empty() {
        let mut b = boxes(&[("a", 3, true)]);
        assert!(next_batch(&mut b, 20, Duration::from_secs(60), &|_| true).is_none());
        assert!(next_batch(&mut b, 20, Duration::ZERO, &|_| true).is_some());
    }
}
