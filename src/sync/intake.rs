//! Intake: claim due schedules, read their staged state and their copies, and plan the changes
//! per mailbox with the product rules (`plan`). Skips are ledger entries, never errors.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::Shared;
use super::plan::{Op, plan};
use crate::event::{self, ScheduleEvent};
use crate::internal_events::{
    ChangeSkipped, DirectoryUnanswered, InternalEvent, StagedConsolidated,
};
use crate::ledger::{self, Entry};
use crate::store::Member;
use crate::tenants::{Company, Lookup, NotSyncing};
use crate::window::StagedSchedule;

/// A claimed schedule with a staged event to apply.
#[derive(Debug)]
pub struct Claimed {
    pub member: Member,
    pub staged: StagedSchedule,
    pub event: ScheduleEvent,
}

/// One change to one mailbox, as planned.
#[derive(Debug, Clone)]
pub struct Job {
    pub claimed: Arc<Claimed>,
    pub mailbox: String,
    pub op: Op,
}

/// What one claim brought in.
#[derive(Default)]
pub struct Intake {
    /// Claimed schedules with a staged event.
    pub claimed: Vec<Arc<Claimed>>,
    /// Claimed schedules with nothing to apply (nothing staged any more, or no longer decodable):
    /// complete at once.
    pub empty: Vec<Member>,
    /// The changes, grouped by (company, mailbox).
    pub jobs: Vec<Job>,
    /// Ledger entries for what was skipped.
    pub notes: Vec<(Member, Entry)>,
    /// The companies involved that have usable credentials.
    pub companies: HashMap<String, Company>,
    pub report: FlushReport,
}

impl Intake {
    pub fn is_empty(&self) -> bool {
        self.claimed.is_empty() && self.empty.is_empty()
    }

    pub fn len(&self) -> usize {
        self.claimed.len() + self.empty.len()
    }
}

/// What the flush did, for tests, the benchmark and the progress log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    pub schedules: usize,
    pub creates: usize,
    pub updates: usize,
    pub deletes: usize,
    pub lookups: usize,
    pub dead_letters: usize,
    pub skipped: usize,
    /// Schedules given back because the directory could not answer for their company.
    pub deferred: usize,
}

impl FlushReport {
    pub fn add(&mut self, o: &FlushReport) {
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

/// Claims up to `limit` due schedules and plans them.
pub(crate) async fn intake(s: &Shared, limit: usize) -> Result<Intake, redis::RedisError> {
    // Before the directory's first load every claim would only be given back: claim nothing.
    if !s.directory.is_loaded() {
        return Ok(Intake::default());
    }
    let members = s.windows.claim(&s.token, limit, s.claim_lease()).await?;
    if members.is_empty() {
        return Ok(Intake::default());
    }
    let staged = s.windows.read(&members).await?;
    StagedConsolidated::of(&staged).emit(&s.metrics);
    let copies = s.copies.all(&members).await?;
    let mut intake = Intake {
        report: FlushReport {
            schedules: members.len(),
            ..FlushReport::default()
        },
        ..Intake::default()
    };
    let mut rows = Vec::new();
    for ((member, staged), copies) in members.into_iter().zip(staged).zip(copies) {
        match staged.and_then(|st| decoded(&member, st)) {
            Some((staged, event)) => {
                let claimed = Arc::new(Claimed {
                    member,
                    staged,
                    event,
                });
                intake.claimed.push(claimed.clone());
                rows.push((claimed, copies));
            }
            None => intake.empty.push(member),
        }
    }
    let directory = read_directory(s, &intake.claimed);
    let rows = defer_unanswered(s, &mut intake, rows, &directory).await?;
    let mut groups: BTreeMap<(String, String), Vec<Job>> = BTreeMap::new();
    for (claimed, copies) in rows {
        for job in plan_one(s, &claimed, &copies, &directory, &mut intake) {
            let key = (job.claimed.member.company_id.clone(), job.mailbox.clone());
            groups.entry(key).or_default().push(job);
        }
    }
    intake.jobs = groups.into_values().flatten().collect();
    intake.companies = directory
        .into_iter()
        .filter_map(|(id, entry)| match entry {
            Lookup::Known(e) => Some((id, e.company.clone())),
            _ => None,
        })
        .collect();
    Ok(intake)
}

/// How long a schedule waits when the directory cannot answer for its company.
pub const DIRECTORY_RETRY: Duration = Duration::from_secs(10);

type Row = (Arc<Claimed>, BTreeMap<String, crate::store::CopyRecord>);

/// Gives back, due again after [`DIRECTORY_RETRY`], the claims of companies the directory
/// cannot answer for now (not loaded, unreachable, empty, or a company it knew and lost):
/// counted and noted with the reason, never skipped. The rest are returned.
async fn defer_unanswered(
    s: &Shared,
    intake: &mut Intake,
    rows: Vec<Row>,
    directory: &DirectorySlice,
) -> Result<Vec<Row>, redis::RedisError> {
    let mut deferred = Vec::new();
    let mut kept = Vec::with_capacity(rows.len());
    for row in rows {
        match directory.get(&row.0.member.company_id) {
            Some(Lookup::Unavailable(reason)) => {
                DirectoryUnanswered {
                    company: &row.0.member.company_id,
                    reason,
                }
                .emit(&s.metrics);
                let note = Entry::new(
                    row.0.event.revision,
                    "-",
                    "plan",
                    ledger::Outcome::Deferred,
                    reason,
                );
                intake.notes.push((row.0.member.clone(), note));
                deferred.push(row.0.member.clone());
            }
            _ => kept.push(row),
        }
    }
    if !deferred.is_empty() {
        intake.claimed.retain(|c| !deferred.contains(&c.member));
        intake.report.deferred += deferred.len();
        s.windows
            .release(&s.token, &deferred, DIRECTORY_RETRY)
            .await?;
    }
    Ok(kept)
}

fn decoded(m: &Member, staged: StagedSchedule) -> Option<(StagedSchedule, ScheduleEvent)> {
    match event::decode(&staged.raw) {
        Ok(ev) => Some((staged, ev)),
        Err(e) => {
            warn!(company = %m.company_id, schedule = %m.schedule_id, error = %e, "flush: the staged event no longer decodes; skipped");
            None
        }
    }
}

/// Per company: what this worker's directory cache says of it, asked once per claim.
type DirectorySlice = HashMap<String, Lookup>;

fn read_directory(s: &Shared, claimed: &[Arc<Claimed>]) -> DirectorySlice {
    let mut out: DirectorySlice = HashMap::new();
    for c in claimed {
        let id = &c.member.company_id;
        if out.contains_key(id) {
            continue;
        }
        let entry = s.directory.lookup(id);
        if matches!(entry, Lookup::Known(_)) {
            s.metrics.company_loaded(id);
        }
        out.insert(id.clone(), entry);
    }
    out
}

/// The jobs of one claimed schedule; skips go to the ledger and the report.
fn plan_one(
    s: &Shared,
    claimed: &Arc<Claimed>,
    copies: &BTreeMap<String, crate::store::CopyRecord>,
    directory: &DirectorySlice,
    intake: &mut Intake,
) -> Vec<Job> {
    let ev = &claimed.event;
    let member = &claimed.member;
    let entry = match directory.get(&ev.company_id) {
        Some(Lookup::Known(e)) => Some(e),
        _ => None,
    };
    let users = match entry.map(|e| e.company.sync_allowed().map(|()| &e.users)) {
        Some(Ok(users)) => users,
        other => {
            let why = match other {
                Some(Err(why)) => why,
                _ => NotSyncing::UnknownCompany,
            }
            .code();
            intake.report.skipped += 1;
            ChangeSkipped { reason: why }.emit(&s.metrics);
            let note = Entry::new(ev.revision, "-", "plan", ledger::Outcome::Skipped, why);
            intake.notes.push((member.clone(), note));
            return Vec::new();
        }
    };
    let (report, notes) = (&mut intake.report, &mut intake.notes);
    let mut on_skip = |reason: &'static str, user: &str| {
        report.skipped += 1;
        ChangeSkipped { reason }.emit(&s.metrics);
        let target = format!("user {user}");
        let note = Entry::new(
            ev.revision,
            &target,
            "plan",
            ledger::Outcome::Skipped,
            reason,
        );
        notes.push((member.clone(), note));
    };
    plan(ev, copies, users, &mut on_skip)
        .into_iter()
        .map(|(mailbox, op)| Job {
            claimed: claimed.clone(),
            mailbox,
            op,
        })
        .collect()
}
