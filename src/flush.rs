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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::amqp::{self, Publisher};
use crate::config::Config;
use crate::event::{self, Schedule, ScheduleEvent};
use crate::graph::client::GraphClient;
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
            .smembers(self.index_key(company, &crate::tenants::mailbox_key(mailbox)))
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
        let pairs: Vec<(&Member, &str)> = members.iter().map(|m| (*m, mailbox)).collect();
        self.pairs(&pairs).await
    }

    /// Applies puts and removals for one mailbox in one round trip.
    pub async fn write(
        &self,
        mailbox: &str,
        puts: &[(&Member, Copy)],
        removals: &[&Member],
    ) -> Result<(), redis::RedisError> {
        let changes: Vec<(String, Member, Option<Copy>)> = puts
            .iter()
            .map(|(m, c)| (mailbox.to_string(), (*m).clone(), Some(c.clone())))
            .chain(
                removals
                    .iter()
                    .map(|m| (mailbox.to_string(), (*m).clone(), None)),
            )
            .collect();
        self.write_many(&changes).await
    }

    /// The copies for (schedule, mailbox) pairs, in one round trip.
    pub async fn pairs(
        &self,
        pairs: &[(&Member, &str)],
    ) -> Result<Vec<Option<Copy>>, redis::RedisError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (m, mailbox) in pairs {
            pipe.hget(self.key(m), *mailbox);
        }
        let mut r = self.redis.clone();
        let rows: Vec<Option<String>> = pipe.query_async(&mut r).await?;
        Ok(rows
            .into_iter()
            .map(|v| v.and_then(|s| serde_json::from_str(&s).ok()))
            .collect())
    }

    /// Puts (`Some`) or removes (`None`) copies across mailboxes, in one round trip.
    pub async fn write_many(
        &self,
        changes: &[(String, Member, Option<Copy>)],
    ) -> Result<(), redis::RedisError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (mailbox, m, c) in changes {
            match c {
                Some(c) => {
                    pipe.hset(
                        self.key(m),
                        mailbox,
                        serde_json::to_string(c).expect("serializable"),
                    )
                    .ignore();
                    pipe.sadd(self.index_key(&m.company_id, mailbox), &m.schedule_id)
                        .ignore();
                }
                None => {
                    pipe.hdel(self.key(m), mailbox).ignore();
                    pipe.srem(self.index_key(&m.company_id, mailbox), &m.schedule_id)
                        .ignore();
                }
            }
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

/// A held mailbox lease (see [`MailboxLeases::acquire`]).
pub struct LeaseGuard {
    leases: MailboxLeases,
    company: String,
    mailbox: String,
    token: String,
    _renewer: AbortOnDrop,
}

impl LeaseGuard {
    pub async fn release(self) {
        self.leases
            .release_many(&self.company, &[(self.mailbox.clone(), self.token.clone())])
            .await;
    }
}

/// A background task that lives exactly as long as its owner (a lease, a claim): if the owner's
/// task is cancelled or the worker dies, the renewing stops and the lease runs out.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

    /// Takes one mailbox's lease, trying for up to `wait`; `None` if another worker held it
    /// throughout. The guard renews it until released (or dropped: then it expires).
    pub async fn acquire(
        &self,
        company: &str,
        mailbox: &str,
        wait: Duration,
    ) -> Result<Option<LeaseGuard>, redis::RedisError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mailboxes = [mailbox.to_string()];
        loop {
            if let Some(token) = self
                .try_acquire_many(company, &mailboxes)
                .await?
                .pop()
                .flatten()
            {
                let held = Arc::new(std::sync::Mutex::new(BTreeMap::from([(
                    mailbox.to_string(),
                    token.clone(),
                )])));
                return Ok(Some(LeaseGuard {
                    leases: self.clone(),
                    company: company.to_string(),
                    mailbox: mailbox.to_string(),
                    token,
                    _renewer: AbortOnDrop(self.renew_all(company.to_string(), held)),
                }));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            let jitter = rand::random::<u64>() % 40;
            tokio::time::sleep(Duration::from_millis(30 + jitter)).await;
        }
    }

    /// Tries to take several mailboxes' leases at once (one round trip); a token for each taken.
    pub async fn try_acquire_many(
        &self,
        company: &str,
        mailboxes: &[String],
    ) -> Result<Vec<Option<String>>, redis::RedisError> {
        let tokens: Vec<String> = mailboxes
            .iter()
            .map(|_| uuid::Uuid::new_v4().simple().to_string())
            .collect();
        let mut pipe = redis::pipe();
        for (m, t) in mailboxes.iter().zip(&tokens) {
            pipe.cmd("SET")
                .arg(self.key(company, m))
                .arg(t)
                .arg("NX")
                .arg("PX")
                .arg(self.ttl.as_millis() as u64);
        }
        let mut r = self.redis.clone();
        let ok: Vec<Option<String>> = pipe.query_async(&mut r).await?;
        Ok(ok
            .into_iter()
            .zip(tokens)
            .map(|(ok, t)| ok.map(|_| t))
            .collect())
    }

    /// Gives leases back (best effort: a lease not given back expires).
    pub async fn release_many(&self, company: &str, held: &[(String, String)]) {
        if held.is_empty() {
            return;
        }
        let script = redis::Script::new(RELEASE_LUA);
        let mut pipe = redis::pipe();
        for (m, t) in held {
            pipe.invoke_script(script.key(self.key(company, m)).arg(t))
                .ignore();
        }
        let mut r = self.redis.clone();
        if let Err(e) = pipe.query_async::<()>(&mut r).await {
            // NOSCRIPT on a fresh server: load once and retry.
            let _: Result<String, _> = script.prepare_invoke().load_async(&mut r).await;
            if pipe.query_async::<()>(&mut r).await.is_err() {
                warn!(error = %e, "mailbox leases not released; they expire by themselves");
            }
        }
    }

    /// Renews every (company, mailbox) lease in `held` every third of the lease time until
    /// aborted.
    pub fn renew_keys(
        &self,
        held: Arc<std::sync::Mutex<BTreeMap<(String, String), String>>>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let script = redis::Script::new(EXTEND_LUA);
            let mut r = this.redis.clone();
            let _: Result<String, _> = script.prepare_invoke().load_async(&mut r).await;
            loop {
                tokio::time::sleep(this.ttl / 3).await;
                let now: Vec<((String, String), String)> = held
                    .lock()
                    .expect("lease map")
                    .iter()
                    .map(|(k, t)| (k.clone(), t.clone()))
                    .collect();
                if now.is_empty() {
                    continue;
                }
                let mut pipe = redis::pipe();
                for ((c, m), t) in &now {
                    pipe.invoke_script(
                        script
                            .key(this.key(c, m))
                            .arg(t)
                            .arg(this.ttl.as_millis() as u64),
                    )
                    .ignore();
                }
                let _ = pipe.query_async::<()>(&mut r).await;
            }
        })
    }

    /// Renews every lease in `held` every third of the lease time until aborted.
    pub fn renew_all(
        &self,
        company: String,
        held: Arc<std::sync::Mutex<BTreeMap<String, String>>>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let script = redis::Script::new(EXTEND_LUA);
            let mut r = this.redis.clone();
            let _: Result<String, _> = script.prepare_invoke().load_async(&mut r).await;
            loop {
                tokio::time::sleep(this.ttl / 3).await;
                let now: Vec<(String, String)> = held
                    .lock()
                    .expect("lease map")
                    .iter()
                    .map(|(m, t)| (m.clone(), t.clone()))
                    .collect();
                let mut pipe = redis::pipe();
                for (m, t) in &now {
                    pipe.invoke_script(
                        script
                            .key(this.key(&company, m))
                            .arg(t)
                            .arg(this.ttl.as_millis() as u64),
                    )
                    .ignore();
                }
                let _ = pipe.query_async::<()>(&mut r).await;
            }
        })
    }
}

/// One change to one mailbox, as planned before the mailbox's lease is taken.
#[derive(Debug, Clone)]
pub(crate) struct Op {
    member_idx: usize,
    user: String,
    kind: OpKind,
}

#[derive(Debug, Clone)]
pub(crate) enum OpKind {
    /// Create or update the copy to this revision.
    Upsert,
    /// Delete the copy (a deleted schedule, or a participant removed).
    Delete,
}

/// A claimed schedule while it is flushed.
pub(crate) struct Claimed {
    pub(crate) member: Member,
    pub(crate) staged: Option<StagedSchedule>,
    pub(crate) event: Option<ScheduleEvent>,
}

/// How one op ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Applied, already applied, or dead-lettered: nothing left to do.
    Settled,
    /// Interrupted before it was settled (Redis or RabbitMQ failed): retried after a delay.
    Unsettled,
}

/// Claimed schedules and their planned changes, ready for `apply`.
#[derive(Default)]
pub(crate) struct Intake {
    pub claimed: Vec<Claimed>,
    pub jobs: Vec<crate::apply::Job>,
    pub notes: Vec<(Member, Entry)>,
    pub companies: HashMap<String, Company>,
    pub report: FlushReport,
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
}

impl FlushReport {
    pub(crate) fn add(&mut self, o: &FlushReport) {
        self.schedules += o.schedules;
        self.creates += o.creates;
        self.updates += o.updates;
        self.deletes += o.deletes;
        self.lookups += o.lookups;
        self.dead_letters += o.dead_letters;
        self.skipped += o.skipped;
    }
}

/// Everything a flush needs; cheap to clone (all handles).
#[derive(Clone)]
pub struct Flusher {
    pub(crate) cfg: Arc<Config>,
    pub(crate) windows: Windows,
    pub(crate) directory: Directory,
    pub(crate) copies: Copies,
    pub(crate) leases: MailboxLeases,
    pub(crate) ledger: Ledger,
    pub(crate) graph: GraphClient,
    pub(crate) metrics: Arc<Metrics>,
    /// This worker's claim token.
    pub(crate) token: String,
    pub(crate) default_zone: jiff::tz::TimeZone,
    dead_letters: DeadLetterChannel,
}

/// The flush's own AMQP connection for dead letters, opened on first use.
type DeadLetterChannel = Arc<tokio::sync::Mutex<Option<(lapin::Connection, Arc<Publisher>)>>>;

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
            directory: Directory::from_config(redis.clone(), &cfg),
            copies: Copies::new(redis.clone(), &prefix),
            ledger: Ledger::new(
                redis.clone(),
                &prefix,
                Duration::from_secs(cfg.ledger.retention_days * 86_400),
                cfg.ledger.max_entries,
            )
            .with_metrics(metrics.clone()),
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

    /// This worker's claim token (the owner recorded for its claims; shutdown releases them).
    pub fn claim_token(&self) -> &str {
        &self.token
    }

    pub(crate) async fn observe_backlog(&self) {
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

    /// Claims up to `limit` due schedules and plans them: each claimed schedule, the changes to
    /// write per mailbox, the ledger's entries for what is skipped, and the companies involved.
    pub(crate) async fn intake(&self, limit: usize) -> Result<Intake, redis::RedisError> {
        let lease = Duration::from_secs(self.cfg.window.claim_lease_seconds);
        let members = self.windows.claim(&self.token, limit, lease).await?;
        if members.is_empty() {
            return Ok(Intake::default());
        }
        let members = &members[..];
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
                    self.metrics.company_loaded(id);
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

        let jobs = groups
            .into_iter()
            .flat_map(|((_, mailbox), ops)| {
                ops.into_iter().map(move |op| crate::apply::Job {
                    member_idx: op.member_idx,
                    mailbox: mailbox.clone(),
                    user: op.user,
                    kind: op.kind,
                })
            })
            .collect();
        Ok(Intake {
            claimed,
            jobs,
            notes,
            companies: companies
                .into_iter()
                .filter_map(|(id, c)| c.map(|c| (id, c)))
                .collect(),
            report,
        })
    }

    fn skip(&self, report: &mut FlushReport, reason: &str) {
        report.skipped += 1;
        self.metrics
            .events_skipped
            .get_or_create(&Metrics::label("reason", reason))
            .inc();
    }

    pub(crate) async fn publisher(&self) -> Result<Arc<Publisher>, amqp::AmqpError> {
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
}

fn redis_err(e: crate::tenants::DirectoryError) -> redis::RedisError {
    match e {
        crate::tenants::DirectoryError::Redis(r) => r,
        other => {
            redis::RedisError::from((redis::ErrorKind::Client, "directory", other.to_string()))
        }
    }
}

/// The product rules, per mailbox: who gets a copy of this change.
///
/// - a deleted schedule: every recorded copy is deleted, and the copies of the participants its
///   last state names (if it carries one) are looked for;
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
    if ev.is_delete() {
        for (mailbox, copy) in copies {
            out.push((mailbox.clone(), op(&copy.user, OpKind::Delete)));
        }
        // A copy the mapping does not know of (Redis lost it) can only be looked for in the
        // mailboxes the delete's last state names.
        if let Some(last) = &ev.schedule {
            for (mailbox, user) in targets(ev, last, users, skip) {
                if !copies.contains_key(&mailbox) {
                    out.push((mailbox, op(&user, OpKind::Delete)));
                }
            }
        }
        return out;
    }
    let Some(schedule) = ev.schedule.as_ref() else {
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
