//! The repair pass (issue #19): copies deleted or edited in Outlook come back without waiting
//! for the schedule's next change in cyzen. Read top to bottom:
//!
//! 1. **When.** Every linked mailbox of a company whose drift policy is not `off` is scheduled
//!    in `repair-due` (`store::repair`), first at a time spread over `repair.interval_minutes`
//!    by a hash of its name, then every interval. A worker claims one due mailbox at a time
//!    (the claim moves it a whole interval on at once, so two workers never take one pass),
//!    and only while nothing is due for the flush: changes from cyzen go first.
//! 2. **Read** (`read`), under the mailbox's exclusive lease (the flush's own, so Graph's
//!    4-in-flight limit holds) and within its paced request budget: one calendarView delta
//!    round from the mailbox's cursor, or a full round of the range (`repair.days_back` to
//!    `days_ahead` around today) when it has none, when the range's first day changed, or when
//!    Graph no longer knows the cursor (410 `syncStateNotFound`).
//! 3. **Decide** (`decide`, pure): each listed item that is one of our copies (by the mapping)
//!    is our own last write (its changeKey is the one recorded with the copy: nothing to do),
//!    or a copy that drifted: `@removed` (deleted, or moved out of the range) or edited.
//! 4. **Act**, per the company's policy: `repair` marks the copy drifted and makes its schedule
//!    due, and the flush writes it again from the staged state (PATCH, or on 404 a create with
//!    a recorded transactionId, so a retry never duplicates; the ledger says "edited in
//!    Outlook, restored" or "deleted in Outlook, recreated"); `report` only counts and notes
//!    it in the ledger. A schedule whose staged state has expired is counted and logged with
//!    its ids, never guessed at. The cursor moves on only after that is recorded.

pub mod decide;
pub mod read;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use self::decide::{Finding, Ours, decide};
use self::read::{Range, Reader, Round, today};
use crate::config::Config;
use crate::graph::client::GraphClient;
use crate::graph::error::GraphError;
use crate::internal_events::InternalEvent;
use crate::ledger::{self, Entry, Ledger};
use crate::metrics::Metrics;
use crate::store::repair::{DeltaCursor, RepairStore};
use crate::store::{self, Copies, CopyRecord, Drift, LeaseGuard, MailboxLeases, Member};
use crate::tenants::{Company, Directory, DriftPolicy, UserStatus, mailbox_key};
use crate::window::{Windows, now_ms};

/// How long a pass waits for a mailbox's lease before leaving it to the flush.
const LEASE_WAIT: Duration = Duration::from_millis(200);
/// A mailbox whose lease was busy is tried again this much later.
const BUSY_RETRY: Duration = Duration::from_secs(60);
/// How often a worker adds newly linked mailboxes to the schedule.
const REGISTER_EVERY: Duration = Duration::from_secs(60);

/// Why a pass did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("Redis did not answer: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the company's directory entry could not be read: {0}")]
    Directory(String),
    #[error("Graph refused the delta read: {0}")]
    Graph(#[from] GraphError),
}

/// What one pass over one mailbox did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// `clean`, `drift`, `restarted`, `busy` (another worker held the mailbox), or `skipped`
    /// (policy off, the company not syncing, the user not linked).
    pub result: &'static str,
    /// calendarView delta requests sent.
    pub requests: u32,
    /// The round read the whole range.
    pub full: bool,
    /// The cursor was stale (410) and the range was read from scratch.
    pub restarted: bool,
    /// Copies found changed in Outlook (restored by the flush under `repair`).
    pub found: Vec<(Member, Drift)>,
    /// Of those, the ones whose staged state had expired: counted, not restored.
    pub unrestorable: Vec<(Member, Drift)>,
    /// Copies whose changeKey was recorded for the first time.
    pub adopted: usize,
}

/// A worker's repair passes; cheap to clone.
#[derive(Clone)]
pub struct Repairer {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Arc<Config>,
    store: RepairStore,
    copies: Copies,
    windows: Windows,
    directory: Directory,
    leases: MailboxLeases,
    ledger: Ledger,
    graph: GraphClient,
    metrics: Arc<Metrics>,
}

impl Repairer {
    pub fn new(
        cfg: Arc<Config>,
        redis: crate::store::Redis,
        graph: GraphClient,
        metrics: Arc<Metrics>,
    ) -> Self {
        let keys = store::keys(&cfg);
        let inner = Inner {
            store: RepairStore::new(redis.clone(), keys.clone()),
            copies: Copies::new(redis.clone(), keys.clone()),
            windows: Windows::new(redis.clone(), keys.clone(), cfg.window()),
            directory: Directory::from_config(&cfg),
            leases: MailboxLeases::new(
                redis.clone(),
                keys,
                Duration::from_secs(cfg.graph.mailbox_lease_seconds),
                cfg.mailbox_budget(),
            ),
            ledger: Ledger::from_config(redis, &cfg).with_metrics(metrics.clone()),
            graph,
            metrics,
            cfg,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.inner.cfg.repair.interval_minutes * 60)
    }

    /// Runs passes as they come due until `shutdown` turns true (a pass in progress finishes).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        if !self.inner.cfg.repair.enabled {
            return;
        }
        info!(
            interval_minutes = self.inner.cfg.repair.interval_minutes,
            "repair: running"
        );
        let poll = Duration::from_secs(self.inner.cfg.repair.poll_seconds);
        let mut registered: Option<tokio::time::Instant> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if registered.is_none_or(|t| t.elapsed() >= REGISTER_EVERY) {
                match self.register().await {
                    Ok(_) => registered = Some(tokio::time::Instant::now()),
                    Err(e) => {
                        warn!(error = %e, "repair: the linked mailboxes could not be scheduled; trying again")
                    }
                }
            }
            if let Err(e) = self.run_due().await {
                warn!(error = %e, "repair: no pass this time; trying again");
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Schedules every linked mailbox of the companies that repair or report, each at its own
    /// point of the interval (a hash of its name), unless already scheduled. The number seen.
    pub async fn register(&self) -> Result<usize, RepairError> {
        let s = &self.inner;
        let interval = self.interval().as_millis() as u64;
        let now = now_ms();
        let mut new = Vec::new();
        for company in s.directory.company_ids().await.map_err(dir_err)? {
            let Some(c) = s.directory.company(&company).await.map_err(dir_err)? else {
                continue;
            };
            if c.drift == DriftPolicy::Off || c.sync_allowed().is_err() {
                continue;
            }
            for u in s.directory.users(&company).await.map_err(dir_err)?.values() {
                let mailbox = u.mailbox_key();
                let at = now + spread(&company, &mailbox, interval);
                new.push((company.clone(), mailbox, at));
            }
        }
        s.store.schedule_new(&new).await?;
        Ok(new.len())
    }

    /// Runs the pass of one due mailbox, if nothing is due for the flush: which mailbox, and
    /// what its pass did (`None`: nothing ran).
    pub async fn run_due(&self) -> Result<Option<(String, PassReport)>, RepairError> {
        let s = &self.inner;
        if s.windows.due_now().await? > 0 {
            return Ok(None); // cyzen's changes first
        }
        let now = now_ms();
        let next = now + self.interval().as_millis() as u64;
        let mut ran = None;
        for (company, mailbox) in s.store.claim_due(now, 1, next).await? {
            match self.pass(&company, &mailbox).await {
                Ok(r) => {
                    if r.result == "busy" {
                        let retry = now_ms() + BUSY_RETRY.as_millis() as u64;
                        s.store.reschedule(&company, &mailbox, retry).await?;
                    }
                    ran = Some((mailbox, r));
                }
                Err(e) => {
                    s.metrics
                        .drift
                        .passes
                        .get_or_create(&Metrics::label("result", "failed"))
                        .inc();
                    warn!(company, mailbox, error = %e, "repair: the pass over this mailbox failed; its next pass is in repair.interval_minutes");
                }
            }
        }
        Ok(ran)
    }

    /// One pass over one mailbox (see the module's steps). Tests and the benchmark call it
    /// directly; the loop calls it for each due mailbox.
    pub async fn pass(&self, company: &str, mailbox: &str) -> Result<PassReport, RepairError> {
        let s = &self.inner;
        let mailbox = mailbox_key(mailbox);
        let Some(c) = s.directory.company(company).await.map_err(dir_err)? else {
            s.store.forget(company, &mailbox).await?;
            return Ok(self.counted(skipped()));
        };
        let users = s.directory.users(company).await.map_err(dir_err)?;
        let linked = users
            .values()
            .any(|u| u.mailbox_key() == mailbox && u.status != UserStatus::AuthFailed);
        let credentials = c.credentials.as_ref().map(|sc| sc.credentials());
        let (true, Ok(()), Some(credentials)) = (linked, c.sync_allowed(), credentials) else {
            if !users.values().any(|u| u.mailbox_key() == mailbox) {
                s.store.forget(company, &mailbox).await?;
            }
            return Ok(self.counted(skipped()));
        };
        if c.drift == DriftPolicy::Off {
            return Ok(self.counted(skipped()));
        }
        let Some(lease) = s.leases.acquire(company, &mailbox, LEASE_WAIT).await? else {
            return Ok(self.counted(PassReport {
                result: "busy",
                ..PassReport::default()
            }));
        };
        let reader = Reader {
            graph: &s.graph,
            company,
            credentials: &credentials,
            mailbox: &mailbox,
            page_size: s.cfg.repair.page_size,
        };
        let result = self.leased(&c, &reader, &lease).await;
        lease.release().await;
        result.map(|r| self.counted(r))
    }

    /// The pass under the mailbox's lease: read a round, act on it, then move the cursor on.
    async fn leased(
        &self,
        c: &Company,
        reader: &Reader<'_>,
        lease: &LeaseGuard,
    ) -> Result<PassReport, RepairError> {
        let s = &self.inner;
        let mailbox = reader.mailbox;
        let r = &s.cfg.repair;
        let range = Range::around(today(), r.days_back, r.days_ahead);
        let from_day = range.from.to_string();
        // A cursor of another range is dropped: the range rolled forward a day.
        let cursor = s
            .store
            .cursor(&c.id, mailbox)
            .await?
            .filter(|cur| cur.from_day == from_day);
        let round = match reader
            .round(lease, cursor.as_ref().map(|cur| cur.link.as_str()), range)
            .await
        {
            Ok(round) => round,
            Err(e) => {
                s.metrics.drift.requests.inc();
                return Err(e.into());
            }
        };
        s.metrics.drift.requests.inc_by(u64::from(round.requests));
        let ours = self.ours(&c.id, mailbox).await?;
        let report = self.act(c, mailbox, &ours, &round).await?;
        let next = DeltaCursor {
            link: round.delta_link,
            from_day,
        };
        s.store.set_cursor(&c.id, mailbox, &next).await?;
        Ok(report)
    }

    /// Our copies in a mailbox, by event id (one round trip for the index, one for the copies).
    async fn ours(&self, company: &str, mailbox: &str) -> Result<Ours, RepairError> {
        let s = &self.inner;
        let members: Vec<Member> = s
            .copies
            .schedules_in_mailbox(company, mailbox)
            .await?
            .into_iter()
            .map(|id| Member::new(company, id))
            .collect();
        let refs: Vec<&Member> = members.iter().collect();
        let records = s.copies.in_mailbox(&refs, mailbox).await?;
        Ok(members
            .into_iter()
            .zip(records)
            .filter_map(|(m, r)| {
                let r = r?;
                Some((r.event_id.clone()?, (m, r)))
            })
            .collect())
    }

    /// Records what the round found: changeKeys adopted, drifts marked for the flush (or only
    /// reported), expired schedules counted and logged.
    async fn act(
        &self,
        c: &Company,
        mailbox: &str,
        ours: &Ours,
        round: &Round,
    ) -> Result<PassReport, RepairError> {
        let s = &self.inner;
        let mut report = PassReport {
            requests: round.requests,
            full: round.full,
            restarted: round.restarted,
            ..PassReport::default()
        };
        let mut findings = decide(&round.items, ours);
        if round.full {
            findings.extend(self.absent(ours, round).await?);
        }
        let record_of = |m: &Member| {
            ours.values()
                .find(|(om, _)| om == m)
                .map(|(_, r)| r.clone())
                .unwrap_or_default()
        };
        let mut puts: Vec<(Member, CopyRecord)> = Vec::new();
        let mut drifted: Vec<(Member, Drift)> = Vec::new();
        for f in findings {
            match f {
                Finding::Adopt { member, change_key } => {
                    let record = CopyRecord {
                        ck: Some(change_key),
                        ..record_of(&member)
                    };
                    puts.push((member, record));
                    report.adopted += 1;
                }
                Finding::Drifted { member, kind } => drifted.push((member, kind)),
            }
        }
        let members: Vec<Member> = drifted.iter().map(|(m, _)| m.clone()).collect();
        let staged = self.staged(&members).await?;
        let mut notes = Vec::new();
        // Copies marked by an earlier pass are due again too (idempotent): a pass that died
        // between marking and making due leaves nothing stuck.
        let mut due: Vec<Member> = ours
            .values()
            .filter(|(_, r)| r.drift.is_some())
            .map(|(m, _)| m.clone())
            .collect();
        for ((member, kind), staged) in drifted.into_iter().zip(staged) {
            let record = record_of(&member);
            let label = Metrics::label("kind", kind.as_str());
            let Some(staged) = staged else {
                s.metrics.drift.unrestorable.get_or_create(&label).inc();
                warn!(company = %member.company_id, schedule = %member.schedule_id, mailbox, event_id = record.event_id.as_deref().unwrap_or("-"), kind = kind.as_str(), "repair: a copy changed in Outlook cannot be restored: its schedule's state has expired from Redis (past ledger.retention_days); the next change in cyzen rewrites it");
                let note = Entry::new(
                    record.rev,
                    mailbox,
                    "repair",
                    ledger::Outcome::Skipped,
                    "drift_unrestorable",
                );
                notes.push((member.clone(), note));
                report.unrestorable.push((member, kind));
                continue;
            };
            s.metrics.drift.found.get_or_create(&label).inc();
            info!(company = %member.company_id, schedule = %member.schedule_id, mailbox, event_id = record.event_id.as_deref().unwrap_or("-"), kind = kind.as_str(), policy = c.drift.as_str(), "repair: a copy was changed in Outlook");
            if c.drift == DriftPolicy::Report {
                let reason = match kind {
                    Drift::Deleted => "drift_reported_deleted",
                    Drift::Edited => "drift_reported_edited",
                };
                let note = Entry::new(
                    staged.revision,
                    mailbox,
                    "repair",
                    ledger::Outcome::Skipped,
                    reason,
                );
                notes.push((member.clone(), note));
            } else {
                let record = CopyRecord {
                    drift: Some(kind),
                    ..record
                };
                puts.push((member.clone(), record));
                due.push(member.clone());
            }
            report.found.push((member, kind));
        }
        let put_refs: Vec<(&Member, CopyRecord)> =
            puts.iter().map(|(m, r)| (m, r.clone())).collect();
        s.copies.write(mailbox, &put_refs, &[]).await?;
        s.windows.make_due_now(&due).await?;
        if !notes.is_empty() {
            s.ledger.record(&notes).await?;
        }
        report.result = match (report.restarted, report.found.is_empty()) {
            (true, _) => "restarted",
            (false, false) => "drift",
            (false, true) => "clean",
        };
        Ok(report)
    }

    /// Our copies a full round did not list although their staged schedule is in its range.
    async fn absent(&self, ours: &Ours, round: &Round) -> Result<Vec<Finding>, RepairError> {
        let s = &self.inner;
        let r = &s.cfg.repair;
        let range = Range::around(today(), r.days_back, r.days_ahead);
        let members: Vec<Member> = ours.values().map(|(m, _)| m.clone()).collect();
        let staged = self.staged(&members).await?;
        let covered: std::collections::HashSet<Member> = members
            .into_iter()
            .zip(staged)
            .filter_map(|(m, st)| {
                let ev = crate::event::decode(&st?.raw).ok()?;
                range.covers(&ev.schedule?.timing).then_some(m)
            })
            .collect();
        Ok(decide::absent(&round.items, ours, |m| covered.contains(m)))
    }

    /// The staged state of schedules (none asked, none read).
    async fn staged(
        &self,
        members: &[Member],
    ) -> Result<Vec<Option<crate::window::StagedSchedule>>, RepairError> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let staged = self.inner.windows.read(members).await?;
        crate::internal_events::StagedConsolidated::of(&staged).emit(&self.inner.metrics);
        Ok(staged)
    }

    /// When a mailbox's next pass is due (ms since the epoch), if it is scheduled.
    pub async fn due_at(&self, company: &str, mailbox: &str) -> Result<Option<u64>, RepairError> {
        Ok(self
            .inner
            .store
            .due_at(company, &mailbox_key(mailbox))
            .await?)
    }

    /// Moves a scheduled mailbox's next pass to `at_ms` (operators and tests: "now").
    pub async fn due_by(
        &self,
        company: &str,
        mailbox: &str,
        at_ms: u64,
    ) -> Result<(), RepairError> {
        Ok(self
            .inner
            .store
            .reschedule(company, &mailbox_key(mailbox), at_ms)
            .await?)
    }

    fn counted(&self, r: PassReport) -> PassReport {
        self.inner
            .metrics
            .drift
            .passes
            .get_or_create(&Metrics::label("result", r.result))
            .inc();
        r
    }
}

fn skipped() -> PassReport {
    PassReport {
        result: "skipped",
        ..PassReport::default()
    }
}

fn dir_err(e: impl std::fmt::Display) -> RepairError {
    RepairError::Directory(e.to_string())
}

/// Where in the interval a mailbox's passes fall: a stable hash of its name, so a fleet's
/// mailboxes are spread evenly over time and each keeps its slot.
pub fn spread(company: &str, mailbox: &str, interval_ms: u64) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{company}/{mailbox}").as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    n % interval_ms.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes_are_spread_over_the_interval_and_each_keeps_its_slot() {
        let interval = 30 * 60 * 1000;
        let slots: Vec<u64> = (0..1000)
            .map(|i| spread("acme", &format!("user{i}@x.example"), interval))
            .collect();
        assert!(slots.iter().all(|s| *s < interval));
        assert_eq!(slots[7], spread("acme", "user7@x.example", interval));
        // Each tenth of the interval holds about a tenth of the mailboxes.
        for tenth in 0..10 {
            let n = slots
                .iter()
                .filter(|s| **s * 10 / interval == tenth)
                .count();
            assert!((50..=150).contains(&n), "tenth {tenth}: {n}");
        }
    }
}
