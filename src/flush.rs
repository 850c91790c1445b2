//! Flush: claim due schedules, plan the Outlook writes per mailbox from the staged state against
//! the stored copies, and apply them under per-mailbox leases with batching, retry and
//! dead-lettering.
//!
//! The plan is recomputed from state every time (staged revision vs. the copy's applied
//! revision), so any step may be retried, by any worker, after any crash:
//! - a copy whose applied revision is ≥ the staged one is left alone (no regression);
//! - a create first records its `transactionId` (the write-ahead intent); a retry, by any
//!   worker and even of a newer revision, reuses it, and looks the copy up by its tag first, so
//!   a create that timed out but happened is adopted, never duplicated;
//! - where no mapping exists and this Redis did not see the schedule's creation (Redis was
//!   wiped, or the schedule predates the link), the copy is looked up by its tag before creating.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::amqp::{self, Publisher};
use crate::config::Config;
use crate::deadletter::DeadLetter;
use crate::event::{self, Schedule, ScheduleEvent};
use crate::graph::client::{GraphClient, GraphRequest, Method, path_segment};
use crate::graph::error::{ErrorClass, GraphError};
use crate::graph::mapping::{self, MappingOptions};
use crate::ingest::Backoff;
use crate::ledger::{self, Entry, Ledger};
use crate::metrics::Metrics;
use crate::tenants::{Company, Directory, LinkedUser, UserStatus};
use crate::window::{Member, StagedSchedule, Windows};

/// The Outlook copy of one schedule in one mailbox, as recorded in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    /// The cyzen user the mailbox belongs to.
    pub user: String,
    /// `None` while only the intent exists (a create was sent, or is about to be).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The revision applied to the copy (for an intent: the revision being created).
    pub rev: u64,
    /// The create's transactionId, reused by every retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<String>,
}

/// The mapping (company, schedule, mailbox) → copy: `{prefix}:m:{company}/{schedule}`, a hash of
/// lowercase mailbox → JSON [`Copy`]; and its reverse index, the schedules with a copy in a
/// mailbox: `{prefix}:copies-of:{company}:{mailbox}`, a set of schedule ids (for a clean unlink).
#[derive(Clone)]
pub struct Copies {
    redis: ConnectionManager,
    prefix: String,
}

impl Copies {
    pub fn new(redis: ConnectionManager, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
        }
    }

    fn key(&self, m: &Member) -> String {
        format!("{}:m:{}", self.prefix, m.encode())
    }

    fn index_key(&self, company: &str, mailbox: &str) -> String {
        format!("{}:copies-of:{company}:{mailbox}", self.prefix)
    }

    /// The schedules that have (or are creating) a copy in this mailbox.
    pub async fn schedules_in_mailbox(
        &self,
        company: &str,
        mailbox: &str,
    ) -> Result<Vec<String>, redis::RedisError> {
        let mut r = self.redis.clone();
        let mut ids: Vec<String> = r
            .smembers(self.index_key(company, &mailbox.to_ascii_lowercase()))
            .await?;
        ids.sort();
        Ok(ids)
    }

    /// One copy.
    pub async fn get(&self, m: &Member, mailbox: &str) -> Result<Option<Copy>, redis::RedisError> {
        Ok(self.in_mailbox(&[m], mailbox).await?.pop().flatten())
    }

    /// Every copy of each schedule, in one round trip.
    pub async fn all(
        &self,
        members: &[Member],
    ) -> Result<Vec<BTreeMap<String, Copy>>, redis::RedisError> {
        let mut pipe = redis::pipe();
        for m in members {
            pipe.hgetall(self.key(m));
        }
        let mut r = self.redis.clone();
        let rows: Vec<HashMap<String, String>> = pipe.query_async(&mut r).await?;
        Ok(rows
            .into_iter()
            .map(|h| {
                h.into_iter()
                    .filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|c| (k, c)))
                    .collect()
            })
            .collect())
    }

    /// The copies of several schedules in one mailbox, in one round trip.
    pub async fn in_mailbox(
        &self,
        members: &[&Member],
        mailbox: &str,
    ) -> Result<Vec<Option<Copy>>, redis::RedisError> {
        let mut pipe = redis::pipe();
        for m in members {
            pipe.hget(self.key(m), mailbox);
        }
        let mut r = self.redis.clone();
        let rows: Vec<Option<String>> = pipe.query_async(&mut r).await?;
        Ok(rows
            .into_iter()
            .map(|v| v.and_then(|s| serde_json::from_str(&s).ok()))
            .collect())
    }

    /// Applies puts and removals for one mailbox in one round trip.
    pub async fn write(
        &self,
        mailbox: &str,
        puts: &[(&Member, Copy)],
        removals: &[&Member],
    ) -> Result<(), redis::RedisError> {
        if puts.is_empty() && removals.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (m, c) in puts {
            pipe.hset(
                self.key(m),
                mailbox,
                serde_json::to_string(c).expect("serializable"),
            )
            .ignore();
            pipe.sadd(self.index_key(&m.company_id, mailbox), &m.schedule_id)
                .ignore();
        }
        for m in removals {
            pipe.hdel(self.key(m), mailbox).ignore();
            pipe.srem(self.index_key(&m.company_id, mailbox), &m.schedule_id)
                .ignore();
        }
        let mut r = self.redis.clone();
        pipe.query_async::<()>(&mut r).await
    }

    /// Forgets every copy (tests use it to simulate a lost Redis).
    pub async fn wipe(&self, members: &[Member]) -> Result<(), redis::RedisError> {
        let mut r = self.redis.clone();
        for m in members {
            let _: () = r.del(self.key(m)).await?;
        }
        Ok(())
    }
}

/// An exclusive, expiring lease on one mailbox, shared by all workers: writes to a mailbox are
/// serialised, so Graph's 4-in-flight limit per mailbox holds across pods.
#[derive(Clone)]
pub struct MailboxLeases {
    redis: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;
const EXTEND_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"#;

pub struct LeaseGuard {
    leases: MailboxLeases,
    key: String,
    token: String,
    _renewer: AbortOnDrop,
}

/// A background task that lives exactly as long as its owner (a lease, a claim): if the owner's
/// task is cancelled or the worker dies, the renewing stops and the lease runs out.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl LeaseGuard {
    pub async fn release(self) {
        let mut r = self.leases.redis.clone();
        let _: Result<i64, _> = redis::Script::new(RELEASE_LUA)
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut r)
            .await;
    }
}

impl MailboxLeases {
    pub fn new(redis: ConnectionManager, prefix: &str, ttl: Duration) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
            ttl,
        }
    }

    fn key(&self, company: &str, mailbox: &str) -> String {
        format!("{}:lease:{company}:{mailbox}", self.prefix)
    }

    /// Tries for up to `wait` to take the lease; `None` if another worker holds it throughout.
    pub async fn acquire(
        &self,
        company: &str,
        mailbox: &str,
        wait: Duration,
    ) -> Result<Option<LeaseGuard>, redis::RedisError> {
        let key = self.key(company, mailbox);
        let token = uuid::Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + wait;
        let mut r = self.redis.clone();
        loop {
            let ok: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(self.ttl.as_millis() as u64)
                .query_async(&mut r)
                .await?;
            if ok.is_some() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            let jitter = rand::random::<u64>() % 40;
            tokio::time::sleep(Duration::from_millis(30 + jitter)).await;
        }
        let renewer = {
            let mut r = self.redis.clone();
            let (key, token, ttl) = (key.clone(), token.clone(), self.ttl);
            tokio::spawn(async move {
                let script = redis::Script::new(EXTEND_LUA);
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let _: Result<i64, _> = script
                        .key(&key)
                        .arg(&token)
                        .arg(ttl.as_millis() as u64)
                        .invoke_async(&mut r)
                        .await;
                }
            })
        };
        Ok(Some(LeaseGuard {
            leases: self.clone(),
            key,
            token,
            _renewer: AbortOnDrop(renewer),
        }))
    }
}

/// One change to one mailbox, as planned before the mailbox's lease is taken.
#[derive(Debug, Clone)]
struct Op {
    member_idx: usize,
    user: String,
    kind: OpKind,
}

#[derive(Debug, Clone)]
enum OpKind {
    /// Create or update the copy to this revision.
    Upsert,
    /// Delete the copy (a deleted schedule, or a participant removed).
    Delete,
}

/// A claimed schedule while it is flushed.
struct Claimed {
    member: Member,
    staged: Option<StagedSchedule>,
    event: Option<ScheduleEvent>,
}

/// How one op ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Applied, already applied, or dead-lettered: nothing left to do.
    Settled,
    /// Not attempted (the mailbox was busy): the schedule is due again shortly.
    Deferred,
    /// Interrupted before it was settled (Redis or RabbitMQ failed): retried after a delay.
    Unsettled,
}

/// What a flush pass did, for tests and the benchmark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    pub schedules: usize,
    pub creates: usize,
    pub updates: usize,
    pub deletes: usize,
    pub lookups: usize,
    pub dead_letters: usize,
    pub skipped: usize,
    pub deferred: usize,
}

impl FlushReport {
    fn add(&mut self, o: &FlushReport) {
        self.schedules += o.schedules;
        self.creates += o.creates;
        self.updates += o.updates;
        self.deletes += o.deletes;
        self.lookups += o.lookups;
        self.dead_letters += o.dead_letters;
        self.skipped += o.skipped;
        self.deferred += o.deferred;
    }
}

/// Everything a flush needs; cheap to clone (all handles).
#[derive(Clone)]
pub struct Flusher {
    cfg: Arc<Config>,
    windows: Windows,
    directory: Directory,
    copies: Copies,
    leases: MailboxLeases,
    ledger: Ledger,
    graph: GraphClient,
    metrics: Arc<Metrics>,
    /// This worker's claim token.
    token: String,
    default_zone: jiff::tz::TimeZone,
    dead_letters: DeadLetterChannel,
}

/// The flush's own AMQP connection for dead letters, opened on first use.
type DeadLetterChannel = Arc<tokio::sync::Mutex<Option<(lapin::Connection, Arc<Publisher>)>>>;

/// How long a flush waits for a busy mailbox before deferring its changes to a later pass.
const LEASE_WAIT: Duration = Duration::from_secs(2);

impl Flusher {
    pub fn new(
        cfg: Arc<Config>,
        redis: ConnectionManager,
        graph: GraphClient,
        metrics: Arc<Metrics>,
    ) -> Self {
        let prefix = cfg.redis.key_prefix.clone();
        let default_zone =
            jiff::tz::TimeZone::get(&cfg.graph.default_time_zone).expect("validated in config");
        Self {
            windows: Windows::new(redis.clone(), &prefix, cfg.window()),
            directory: Directory::new(redis.clone(), &prefix),
            copies: Copies::new(redis.clone(), &prefix),
            ledger: Ledger::new(
                redis.clone(),
                &prefix,
                Duration::from_secs(cfg.ledger.retention_days * 86_400),
                cfg.ledger.max_entries,
            ),
            leases: MailboxLeases::new(
                redis,
                &prefix,
                Duration::from_secs(cfg.graph.mailbox_lease_seconds),
            ),
            graph,
            metrics,
            token: format!(
                "{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            default_zone,
            dead_letters: Arc::new(tokio::sync::Mutex::new(None)),
            cfg,
        }
    }

    pub fn copies(&self) -> &Copies {
        &self.copies
    }

    /// Flushes due schedules until `shutdown` turns true.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.cfg.window.poll_interval_ms);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        while !*shutdown.borrow() {
            match self.flush_once().await {
                Ok(r) if r.schedules > 0 => {
                    backoff.reset();
                    continue;
                }
                Ok(_) => {
                    backoff.reset();
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(e) => {
                    let wait = backoff.delay();
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "flush: pass failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// Claims one batch of due schedules and flushes it. Returns what it did.
    pub async fn flush_once(&self) -> Result<FlushReport, redis::RedisError> {
        let lease = Duration::from_secs(self.cfg.window.claim_lease_seconds);
        let members = self
            .windows
            .claim(&self.token, self.cfg.window.claim_batch, lease)
            .await?;
        if members.is_empty() {
            self.observe_backlog().await;
            return Ok(FlushReport::default());
        }
        // Keep the claims alive while the flush runs (long Retry-After waits included).
        let renewer = AbortOnDrop({
            let (w, token, ms) = (self.windows.clone(), self.token.clone(), members.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let _ = w.renew(&token, &ms, lease).await;
                }
            })
        });
        let result = self.flush_members(&members).await;
        drop(renewer);
        let (report, outcomes) = result?;
        let mut done = Vec::new();
        let mut again = Vec::new();
        for (m, o) in members.iter().zip(outcomes) {
            match o {
                Outcome::Settled => done.push(m.clone()),
                Outcome::Deferred | Outcome::Unsettled => again.push(m.clone()),
            }
        }
        self.windows.complete(&self.token, &done).await?;
        if !again.is_empty() {
            self.windows
                .release(&self.token, &again, Duration::from_millis(500))
                .await?;
        }
        self.metrics.schedules_flushed.inc_by(done.len() as u64);
        self.observe_backlog().await;
        debug!(?report, "flush: pass done");
        Ok(report)
    }

    async fn observe_backlog(&self) {
        if let Ok((n, oldest)) = self.windows.backlog().await {
            self.metrics.due_backlog.set(n as i64);
            let age = oldest
                .map(|due| (crate::window::now_ms().saturating_sub(due)) as f64 / 1000.0)
                .unwrap_or(0.0);
            self.metrics.due_oldest_age_seconds.set(age);
        }
    }

    /// Gives back this worker's claims (shutdown): they are due again at once.
    pub async fn release_all(&self, members: &[Member]) -> Result<usize, redis::RedisError> {
        self.windows
            .release(&self.token, members, Duration::ZERO)
            .await
    }

    async fn flush_members(
        &self,
        members: &[Member],
    ) -> Result<(FlushReport, Vec<Outcome>), redis::RedisError> {
        let staged = self.windows.read(members).await?;
        let copies = self.copies.all(members).await?;
        let claimed: Vec<Claimed> = members
            .iter()
            .zip(staged)
            .map(|(m, s)| {
                let event = s.as_ref().and_then(|s| match event::decode(&s.raw) {
                    Ok(ev) => Some(ev),
                    Err(e) => {
                        warn!(company = %m.company_id, schedule = %m.schedule_id, error = %e, "flush: staged event no longer decodes; skipped");
                        None
                    }
                });
                Claimed {
                    member: m.clone(),
                    staged: s,
                    event,
                }
            })
            .collect();
        let mut report = FlushReport {
            schedules: members.len(),
            ..FlushReport::default()
        };

        // Companies and their users, read once per pass.
        let mut companies: HashMap<String, Option<Company>> = HashMap::new();
        let mut users: HashMap<String, HashMap<String, LinkedUser>> = HashMap::new();
        for c in &claimed {
            let id = &c.member.company_id;
            if !companies.contains_key(id) {
                let company = self.directory.company(id).await.map_err(redis_err)?;
                if company.is_some() {
                    users.insert(
                        id.clone(),
                        self.directory.users(id).await.map_err(redis_err)?,
                    );
                }
                companies.insert(id.clone(), company);
            }
        }

        // Plan: (company, mailbox) → ops.
        let mut notes: Vec<(Member, Entry)> = Vec::new();
        let mut groups: BTreeMap<(String, String), Vec<Op>> = BTreeMap::new();
        for (idx, c) in claimed.iter().enumerate() {
            let Some(ev) = &c.event else { continue };
            let company = companies.get(&ev.company_id).and_then(Option::as_ref);
            let allowed = match company {
                None => Err(crate::tenants::NotSyncing::UnknownCompany),
                Some(co) => co.sync_allowed(),
            };
            if let Err(why) = allowed {
                self.skip(&mut report, why.code());
                notes.push((
                    c.member.clone(),
                    Entry::new(
                        ev.revision,
                        "-",
                        "plan",
                        ledger::Outcome::Skipped,
                        why.code(),
                    ),
                ));
                continue;
            }
            let directory = users.get(&ev.company_id).cloned().unwrap_or_default();
            let mut on_skip = |reason: &'static str, user: &str| {
                self.skip(&mut report, reason);
                notes.push((
                    c.member.clone(),
                    Entry::new(
                        ev.revision,
                        &format!("user {user}"),
                        "plan",
                        ledger::Outcome::Skipped,
                        reason,
                    ),
                ));
            };
            for (mailbox, op) in plan(ev, &copies[idx], &directory, &mut on_skip) {
                groups
                    .entry((ev.company_id.clone(), mailbox))
                    .or_default()
                    .push(Op {
                        member_idx: idx,
                        ..op
                    });
            }
        }

        // Apply: mailboxes in parallel, each under its lease.
        let claimed = Arc::new(claimed);
        let parallel = Arc::new(Semaphore::new(
            (self.cfg.graph.max_in_flight_total / 4).max(1),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for ((company_id, mailbox), ops) in groups {
            let company = companies
                .get(&company_id)
                .cloned()
                .flatten()
                .expect("planned only for known companies");
            let (this, claimed, parallel) = (self.clone(), claimed.clone(), parallel.clone());
            tasks.spawn(async move {
                let _permit = parallel.acquire_owned().await.expect("never closed");
                this.apply_mailbox(&company, &mailbox, ops, &claimed).await
            });
        }
        let mut outcomes = vec![Outcome::Settled; members.len()];
        while let Some(res) = tasks.join_next().await {
            let (r, per_op, entries) = res.expect("a mailbox task panicked");
            report.add(&r);
            notes.extend(entries);
            for (idx, o) in per_op {
                outcomes[idx] = worst(outcomes[idx], o);
            }
        }
        if let Err(e) = self.ledger.record(&notes).await {
            warn!(error = %e, "flush: the sync ledger could not be written");
        }
        Ok((report, outcomes))
    }

    fn skip(&self, report: &mut FlushReport, reason: &str) {
        report.skipped += 1;
        self.metrics
            .events_skipped
            .get_or_create(&Metrics::label("reason", reason))
            .inc();
    }

    /// Applies one mailbox's ops under its lease. Returns the report and each op's outcome.
    async fn apply_mailbox(
        &self,
        company: &Company,
        mailbox: &str,
        ops: Vec<Op>,
        claimed: &[Claimed],
    ) -> (FlushReport, Vec<(usize, Outcome)>, Vec<(Member, Entry)>) {
        let mut report = FlushReport::default();
        let mut notes = Vec::new();
        let lease = match self.leases.acquire(&company.id, mailbox, LEASE_WAIT).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                report.deferred += ops.len();
                for o in &ops {
                    let c = &claimed[o.member_idx];
                    let rev = c.event.as_ref().map_or(0, |e| e.revision);
                    notes.push((
                        c.member.clone(),
                        Entry::new(
                            rev,
                            mailbox,
                            "plan",
                            ledger::Outcome::Deferred,
                            "mailbox_busy",
                        ),
                    ));
                }
                return (
                    report,
                    ops.iter()
                        .map(|o| (o.member_idx, Outcome::Deferred))
                        .collect(),
                    notes,
                );
            }
            Err(e) => {
                warn!(error = %e, "flush: mailbox lease unavailable");
                return (
                    report,
                    ops.iter()
                        .map(|o| (o.member_idx, Outcome::Unsettled))
                        .collect(),
                    notes,
                );
            }
        };
        let result = self
            .apply_locked(company, mailbox, &ops, claimed, &mut report, &mut notes)
            .await;
        lease.release().await;
        let outcomes = match result {
            Ok(o) => o,
            Err(e) => {
                warn!(company = %company.id, mailbox, error = %e, "flush: interrupted; the schedules are retried");
                ops.iter()
                    .map(|o| (o.member_idx, Outcome::Unsettled))
                    .collect()
            }
        };
        (report, outcomes, notes)
    }

    async fn apply_locked(
        &self,
        company: &Company,
        mailbox: &str,
        ops: &[Op],
        claimed: &[Claimed],
        report: &mut FlushReport,
        notes: &mut Vec<(Member, Entry)>,
    ) -> Result<Vec<(usize, Outcome)>, FlushError> {
        let creds = company
            .credentials
            .as_ref()
            .expect("sync_allowed checked credentials")
            .credentials();
        let members: Vec<&Member> = ops.iter().map(|o| &claimed[o.member_idx].member).collect();
        // Re-read the copies under the lease: another worker may have moved them meanwhile.
        let current = self.copies.in_mailbox(&members, mailbox).await?;

        let mut work: Vec<Work> = Vec::new();
        let mut outcomes = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let c = &claimed[op.member_idx];
            let ev = c.event.as_ref().expect("planned from an event");
            let born_here = c.staged.as_ref().is_some_and(|s| s.born_here);
            let copy = current[i].clone();
            match (&op.kind, copy) {
                (OpKind::Upsert, Some(copy))
                    if copy.event_id.is_some() && copy.rev >= ev.revision =>
                {
                    outcomes.push((op.member_idx, Outcome::Settled));
                }
                (OpKind::Upsert, Some(copy)) if copy.event_id.is_some() => {
                    work.push(Work::new(i, op, Step::Update(copy.event_id.unwrap())));
                }
                (OpKind::Upsert, Some(intent)) => {
                    // An earlier create may have happened: look first, reuse its transactionId.
                    work.push(Work::new(
                        i,
                        op,
                        Step::Lookup {
                            then_create_tx: intent.tx.clone(),
                        },
                    ));
                }
                (OpKind::Upsert, None) if born_here => {
                    work.push(Work::new(i, op, Step::Create(None)));
                }
                (OpKind::Upsert, None) => {
                    work.push(Work::new(
                        i,
                        op,
                        Step::Lookup {
                            then_create_tx: None,
                        },
                    ));
                }
                (OpKind::Delete, Some(copy)) if copy.event_id.is_some() => {
                    work.push(Work::new(i, op, Step::Delete(copy.event_id.unwrap())));
                }
                (OpKind::Delete, Some(_)) => {
                    work.push(Work::new(i, op, Step::LookupForDelete));
                }
                (OpKind::Delete, None) if !born_here => {
                    work.push(Work::new(i, op, Step::LookupForDelete));
                }
                (OpKind::Delete, None) => outcomes.push((op.member_idx, Outcome::Settled)),
            }
        }
        if work.is_empty() {
            return Ok(outcomes);
        }

        let opts = MappingOptions {
            category: &self.cfg.graph.category,
            default_zone: &self.default_zone,
        };
        let max_attempts = self.cfg.retry.max_attempts;
        let mut backoff = backoff_schedule(&self.cfg);
        let mut round = 0u32;
        while work.iter().any(|w| !w.finished()) {
            round += 1;
            // Intents before creates: recorded before the request is sent.
            let mut intents = Vec::new();
            for w in work.iter_mut().filter(|w| !w.finished()) {
                if let Step::Create(tx) = &w.step
                    && tx.is_none()
                {
                    let ev = claimed[w.op.member_idx].event.as_ref().expect("event");
                    let tx = mapping::transaction_id(
                        &ev.company_id,
                        &ev.schedule_id,
                        mailbox,
                        ev.revision,
                    );
                    w.step = Step::Create(Some(tx.clone()));
                    intents.push((
                        members[w.idx],
                        Copy {
                            user: w.op.user.clone(),
                            event_id: None,
                            rev: ev.revision,
                            tx: Some(tx),
                        },
                    ));
                }
            }
            self.copies.write(mailbox, &intents, &[]).await?;

            let pending: Vec<usize> = (0..work.len()).filter(|&i| !work[i].finished()).collect();
            let mut retry_after: Option<Duration> = None;
            for chunk in pending.chunks(self.cfg.graph.batch_size) {
                let reqs: Vec<GraphRequest> = chunk
                    .iter()
                    .map(|&i| {
                        let w = &work[i];
                        let ev = claimed[w.op.member_idx].event.as_ref().expect("event");
                        request(i, &w.step, ev, mailbox, &opts)
                    })
                    .collect();
                let results = match self.graph.batch(&company.id, &creds, &reqs).await {
                    Ok(r) => r,
                    Err(e) => {
                        let mut all = Vec::with_capacity(chunk.len());
                        for _ in chunk {
                            all.push(Err(e.clone()));
                        }
                        all
                    }
                };
                let mut puts = Vec::new();
                let mut removals = Vec::new();
                for (&i, res) in chunk.iter().zip(results) {
                    let w = &mut work[i];
                    let ev = claimed[w.op.member_idx].event.as_ref().expect("event");
                    w.attempts += 1;
                    let status = match &res {
                        Ok(r) => r.status,
                        Err(e) => e.status.unwrap_or(0),
                    };
                    self.metrics
                        .graph_requests
                        .get_or_create(&Metrics::label("status", status.to_string()))
                        .inc();
                    match (res, w.step.clone()) {
                        (Ok(resp), Step::Lookup { then_create_tx }) => {
                            report.lookups += 1;
                            match first_id(&resp.body) {
                                Some(id) => w.step = Step::Update(id),
                                None => w.step = Step::Create(then_create_tx),
                            }
                            w.attempts = 0;
                        }
                        (Ok(resp), Step::LookupForDelete) => {
                            report.lookups += 1;
                            match first_id(&resp.body) {
                                Some(id) => w.step = Step::Delete(id),
                                None => {
                                    removals.push(members[w.idx]);
                                    w.done = Some(Outcome::Settled);
                                    notes.push((
                                        members[w.idx].clone(),
                                        Entry::new(
                                            ev.revision,
                                            mailbox,
                                            "lookup",
                                            ledger::Outcome::Applied,
                                            "already_gone",
                                        ),
                                    ));
                                }
                            }
                            w.attempts = 0;
                        }
                        (Ok(resp), Step::Create(tx)) => {
                            let id = resp
                                .body
                                .get("id")
                                .and_then(|v| v.as_str())
                                .map(str::to_string);
                            puts.push((
                                members[w.idx],
                                Copy {
                                    user: w.op.user.clone(),
                                    event_id: id,
                                    rev: ev.revision,
                                    tx,
                                },
                            ));
                            report.creates += 1;
                            self.written("create", ev);
                            w.done = Some(Outcome::Settled);
                            notes.push((
                                members[w.idx].clone(),
                                Entry::new(
                                    ev.revision,
                                    mailbox,
                                    "create",
                                    ledger::Outcome::Applied,
                                    "created",
                                ),
                            ));
                        }
                        (Ok(_), Step::Update(id)) => {
                            puts.push((
                                members[w.idx],
                                Copy {
                                    user: w.op.user.clone(),
                                    event_id: Some(id),
                                    rev: ev.revision,
                                    tx: None,
                                },
                            ));
                            report.updates += 1;
                            self.written("update", ev);
                            w.done = Some(Outcome::Settled);
                            notes.push((
                                members[w.idx].clone(),
                                Entry::new(
                                    ev.revision,
                                    mailbox,
                                    "update",
                                    ledger::Outcome::Applied,
                                    "updated",
                                ),
                            ));
                        }
                        (Ok(_), Step::Delete(_)) => {
                            removals.push(members[w.idx]);
                            report.deletes += 1;
                            self.written("delete", ev);
                            w.done = Some(Outcome::Settled);
                            notes.push((
                                members[w.idx].clone(),
                                Entry::new(
                                    ev.revision,
                                    mailbox,
                                    "delete",
                                    ledger::Outcome::Applied,
                                    "deleted",
                                ),
                            ));
                        }
                        (Err(e), step) => {
                            w.first_failure.get_or_insert_with(Timestamp::now);
                            w.last_failure = Some(Timestamp::now());
                            match (&e.class, &step) {
                                (ErrorClass::ItemGone, Step::Delete(_)) => {
                                    removals.push(members[w.idx]);
                                    w.done = Some(Outcome::Settled);
                                    notes.push((
                                        members[w.idx].clone(),
                                        Entry::new(
                                            ev.revision,
                                            mailbox,
                                            "delete",
                                            ledger::Outcome::Applied,
                                            "already_gone",
                                        ),
                                    ));
                                }
                                (ErrorClass::ItemGone, Step::Update(_)) => {
                                    // The copy was deleted in Outlook: create it again.
                                    w.step = Step::Create(None);
                                    w.attempts = 0;
                                }
                                (ErrorClass::Retryable { after }, _) => {
                                    if e.status == Some(429) {
                                        self.metrics.graph_throttled.inc();
                                    }
                                    if let Some(a) = after {
                                        retry_after = Some(retry_after.map_or(*a, |r| r.max(*a)));
                                    }
                                    if w.attempts >= max_attempts {
                                        w.error = Some(e);
                                        w.reason = "retries_exhausted";
                                    } else {
                                        notes.push((
                                            members[w.idx].clone(),
                                            graph_entry(
                                                ev.revision,
                                                mailbox,
                                                &step,
                                                ledger::Outcome::Retrying,
                                                "throttled_or_unavailable",
                                                &e,
                                                w.attempts,
                                            ),
                                        ));
                                    }
                                }
                                (ErrorClass::RefreshToken, _) => {
                                    self.graph.forget_token(&company.id);
                                    if w.attempts >= max_attempts {
                                        w.error = Some(e);
                                        w.reason = "retries_exhausted";
                                    }
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
                self.copies.write(mailbox, &puts, &removals).await?;
            }

            // Dead-letter what failed for good, with Graph's words.
            for w in work
                .iter_mut()
                .filter(|w| w.done.is_none() && w.error.is_some())
            {
                let c = &claimed[w.op.member_idx];
                let outcome = self.dead_letter(company, mailbox, w, c).await;
                let (kind, reason) = if outcome == Outcome::Settled {
                    report.dead_letters += 1;
                    (ledger::Outcome::DeadLettered, w.reason)
                } else {
                    (ledger::Outcome::Retrying, "dead_letter_publish_failed")
                };
                let rev = c.event.as_ref().map_or(0, |e| e.revision);
                let e = w.error.as_ref().expect("an error");
                notes.push((
                    c.member.clone(),
                    graph_entry(rev, mailbox, &w.step, kind, reason, e, w.attempts),
                ));
                w.done = Some(outcome);
            }
            if work.iter().all(Work::finished) {
                break;
            }
            // Honour Retry-After (never retry sooner); else exponential backoff with jitter.
            let cap = Duration::from_secs(self.cfg.retry.max_retry_after_seconds);
            let wait = retry_after
                .map(|d| d.min(cap))
                .unwrap_or_else(|| backoff.next().unwrap_or(cap));
            self.metrics
                .retry_after_wait_seconds
                .inc_by(wait.as_secs_f64());
            debug!(company = %company.id, mailbox, round, wait_ms = wait.as_millis() as u64, "flush: waiting before retrying");
            tokio::time::sleep(wait).await;
        }

        // Feedback to the directory: a success records the sync, a mailbox problem flips the user.
        let mut users_ok: HashSet<&str> = HashSet::new();
        for w in &work {
            match (&w.error, w.done) {
                (None, Some(Outcome::Settled)) => {
                    users_ok.insert(&w.op.user);
                }
                (Some(e), _) if matches!(e.class, ErrorClass::Mailbox(_)) => {
                    let _ = self
                        .directory
                        .record_sync(&company.id, &w.op.user, Err((w.reason, &e.message)))
                        .await;
                }
                _ => {}
            }
        }
        for u in users_ok {
            let _ = self.directory.record_sync(&company.id, u, Ok(())).await;
        }
        outcomes.extend(
            work.iter()
                .map(|w| (w.op.member_idx, w.done.unwrap_or(Outcome::Unsettled))),
        );
        Ok(outcomes)
    }

    fn written(&self, op: &'static str, ev: &ScheduleEvent) {
        self.metrics
            .graph_writes
            .get_or_create(&Metrics::label("op", op))
            .inc();
        let latency = Timestamp::now().as_millisecond() - ev.occurred_at.as_millisecond();
        self.metrics
            .sync_latency_seconds
            .observe(latency.max(0) as f64 / 1000.0);
    }

    async fn publisher(&self) -> Result<Arc<Publisher>, amqp::AmqpError> {
        let mut slot = self.dead_letters.lock().await;
        if let Some((conn, p)) = slot.as_ref()
            && conn.status().connected()
        {
            return Ok(p.clone());
        }
        let conn = amqp::connect(&self.cfg.amqp.url, "outlook-sync flush").await?;
        let p = Arc::new(Publisher::new(&conn).await?);
        *slot = Some((conn, p.clone()));
        Ok(p)
    }

    async fn dead_letter(
        &self,
        company: &Company,
        mailbox: &str,
        w: &Work,
        c: &Claimed,
    ) -> Outcome {
        let ev = c.event.as_ref().expect("event");
        let e = w.error.as_ref().expect("an error");
        let dl = DeadLetter {
            stage: "flush",
            reason: w.reason.to_string(),
            error: e.to_string(),
            company_id: Some(company.id.clone()),
            schedule_id: Some(ev.schedule_id.clone()),
            revision: Some(ev.revision),
            mailbox: Some(mailbox.to_string()),
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
                warn!(company = %company.id, schedule = %ev.schedule_id, mailbox, revision = ev.revision, reason = w.reason, status = ?e.status, code = %e.code, request_id = ?e.request_id, "flush: change dead-lettered");
                self.metrics
                    .dead_letters
                    .get_or_create(&vec![
                        ("stage", "flush".into()),
                        ("reason", w.reason.into()),
                    ])
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

#[derive(Debug, thiserror::Error)]
enum FlushError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

fn redis_err(e: crate::tenants::DirectoryError) -> redis::RedisError {
    match e {
        crate::tenants::DirectoryError::Redis(r) => r,
        other => {
            redis::RedisError::from((redis::ErrorKind::Client, "directory", other.to_string()))
        }
    }
}

fn worst(a: Outcome, b: Outcome) -> Outcome {
    use Outcome::*;
    match (a, b) {
        (Unsettled, _) | (_, Unsettled) => Unsettled,
        (Deferred, _) | (_, Deferred) => Deferred,
        _ => Settled,
    }
}

/// The step an op is at.
#[derive(Debug, Clone)]
enum Step {
    Lookup { then_create_tx: Option<String> },
    LookupForDelete,
    Create(Option<String>),
    Update(String),
    Delete(String),
}

struct Work {
    idx: usize,
    op: Op,
    step: Step,
    attempts: u32,
    done: Option<Outcome>,
    error: Option<GraphError>,
    reason: &'static str,
    first_failure: Option<Timestamp>,
    last_failure: Option<Timestamp>,
}

impl Work {
    fn new(idx: usize, op: &Op, step: Step) -> Self {
        Self {
            idx,
            op: op.clone(),
            step,
            attempts: 0,
            done: None,
            error: None,
            reason: "",
            first_failure: None,
            last_failure: None,
        }
    }

    fn finished(&self) -> bool {
        self.done.is_some()
    }
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
    let op = match step {
        Step::Lookup { .. } | Step::LookupForDelete => "lookup",
        Step::Create(_) => "create",
        Step::Update(_) => "update",
        Step::Delete(_) => "delete",
    };
    Entry {
        graph_status: e.status,
        graph_code: Some(e.code.clone()),
        request_id: e.request_id.clone(),
        attempt,
        ..Entry::new(revision, mailbox, op, outcome, reason)
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

fn backoff_schedule(cfg: &Config) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(cfg.retry.initial_backoff_ms))
        .with_max_delay(Duration::from_millis(cfg.retry.max_backoff_ms))
        .with_jitter()
        .without_max_times()
        .build()
}

/// The product rules, per mailbox: who gets a copy of this change.
///
/// - a deleted schedule: every recorded copy is deleted;
/// - otherwise each linked participant (owner included) whose link predates the change gets a
///   create-or-update; a participant who is no longer on the schedule loses their copy; a user
///   who was unlinked is forgotten (their copies are removed by the unlink itself);
/// - users whose mailbox failed verification (auth_failed) are skipped until re-verified.
fn plan(
    ev: &ScheduleEvent,
    copies: &BTreeMap<String, Copy>,
    users: &HashMap<String, LinkedUser>,
    skip: &mut dyn FnMut(&'static str, &str),
) -> Vec<(String, Op)> {
    let mut out = Vec::new();
    let op = |user: &str, kind| Op {
        member_idx: 0,
        user: user.to_string(),
        kind,
    };
    let Some(schedule) = ev.schedule.as_ref().filter(|_| !ev.is_delete()) else {
        for (mailbox, copy) in copies {
            out.push((mailbox.clone(), op(&copy.user, OpKind::Delete)));
        }
        return out;
    };
    let targets = targets(ev, schedule, users, skip);
    for (mailbox, user) in &targets {
        out.push((mailbox.clone(), op(user, OpKind::Upsert)));
    }
    for (mailbox, copy) in copies {
        if targets.contains_key(mailbox) {
            continue;
        }
        if users.contains_key(&copy.user) {
            out.push((mailbox.clone(), op(&copy.user, OpKind::Delete)));
        }
    }
    out
}

/// Linked participants who get a copy: mailbox (lowercase) → user id.
fn targets(
    ev: &ScheduleEvent,
    schedule: &Schedule,
    users: &HashMap<String, LinkedUser>,
    skip: &mut dyn FnMut(&'static str, &str),
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in schedule.participants() {
        let Some(u) = users.get(p) else {
            skip("participant_not_linked", p);
            continue;
        };
        if ev.occurred_at < u.linked_at {
            skip("change_before_link", p);
            continue;
        }
        if u.status == UserStatus::AuthFailed {
            skip("user_auth_failed", p);
            continue;
        }
        out.insert(u.mailbox_key(), u.user_id.clone());
    }
    out
}

/// Logs the start of a worker's flush loop.
pub fn announce(cfg: &Config) {
    info!(
        window_seconds = cfg.window.seconds,
        graph = %cfg.graph.base_url,
        "flush: running"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, mailbox: &str, linked_at: &str) -> (String, LinkedUser) {
        (
            id.to_string(),
            LinkedUser {
                user_id: id.to_string(),
                mailbox: mailbox.to_string(),
                linked_at: linked_at.parse().unwrap(),
                status: UserStatus::Authenticated,
                reason: None,
                last_sync_at: None,
                last_error: None,
            },
        )
    }

    fn event(participants: &[&str], deleted: bool) -> ScheduleEvent {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/examples/valid/created-timed-tokyo.json"
        ))
        .unwrap();
        let mut ev = event::decode(&body).unwrap();
        let s = ev.schedule.as_mut().unwrap();
        s.owner_user_id = participants[0].to_string();
        s.participant_user_ids = participants.iter().map(|p| p.to_string()).collect();
        if deleted {
            ev.event_type = event::EventType::Deleted;
            ev.schedule = None;
        }
        ev
    }

    fn check(
        ev: ScheduleEvent,
        copies: &[(&str, &str)],
        users: &[(String, LinkedUser)],
        expected: &[(&str, &str)],
    ) {
        let copies: BTreeMap<String, Copy> = copies
            .iter()
            .map(|(mb, user)| {
                (
                    mb.to_string(),
                    Copy {
                        user: user.to_string(),
                        event_id: Some("E".into()),
                        rev: 1,
                        tx: None,
                    },
                )
            })
            .collect();
        let users: HashMap<String, LinkedUser> = users.iter().cloned().collect();
        let got: Vec<(String, &str)> = plan(&ev, &copies, &users, &mut |_, _| {})
            .into_iter()
            .map(|(mb, op)| {
                (
                    mb,
                    match op.kind {
                        OpKind::Upsert => "upsert",
                        OpKind::Delete => "delete",
                    },
                )
            })
            .collect();
        let want: Vec<(String, &str)> = expected.iter().map(|(m, k)| (m.to_string(), *k)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn each_linked_participant_gets_a_copy_and_unlinked_ones_get_nothing() {
        let users = [
            user("u-1", "A@x.com", "2026-01-01T00:00:00Z"),
            user("u-2", "b@x.com", "2026-01-01T00:00:00Z"),
        ];
        check(
            event(&["u-1", "u-2", "u-3"], false),
            &[],
            &users,
            &[("a@x.com", "upsert"), ("b@x.com", "upsert")],
        );
    }

    #[test]
    fn a_removed_participant_loses_the_copy() {
        let users = [
            user("u-1", "a@x.com", "2026-01-01T00:00:00Z"),
            user("u-2", "b@x.com", "2026-01-01T00:00:00Z"),
        ];
        check(
            event(&["u-1"], false),
            &[("a@x.com", "u-1"), ("b@x.com", "u-2")],
            &users,
            &[("a@x.com", "upsert"), ("b@x.com", "delete")],
        );
    }

    #[test]
    fn a_change_from_before_the_link_is_skipped() {
        let users = [user("u-1", "a@x.com", "2030-01-01T00:00:00Z")];
        check(event(&["u-1"], false), &[], &users, &[]);
    }

    #[test]
    fn a_deleted_schedule_deletes_every_copy_and_nothing_else() {
        let users = [user("u-1", "a@x.com", "2026-01-01T00:00:00Z")];
        check(
            event(&["u-1"], true),
            &[("a@x.com", "u-1"), ("c@x.com", "u-9")],
            &users,
            &[("a@x.com", "delete"), ("c@x.com", "delete")],
        );
        check(event(&["u-1"], true), &[], &users, &[]);
    }
}
