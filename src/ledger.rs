//! The sync ledger: per schedule, what happened to each change in each mailbox and why, kept for
//! a bounded time. It answers "why is this schedule not in Outlook?" in one command
//! (`outlook-sync ledger show COMPANY SCHEDULE`, or `GET /ledger/{company}/{schedule}`), together
//! with the schedule's staged state and its copies ([`SyncView`]).
//!
//! Key: `{prefix}:ledger:{company}/{schedule}`, a list of JSON entries, newest first, trimmed to
//! `ledger.max_entries` and expiring `ledger.retention_days` after its last entry.
//!
//! Replays: staging an operator's replay marks the schedule (`replay` in the window's
//! `s:{company}/{schedule}` hash, see `window`); the first entry that applies that revision
//! afterwards is marked `replay: true`, clears the mark and counts in `replays_succeeded`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::flush::Copies;
use crate::metrics::Metrics;
use crate::tenants::{Directory, UserStatus};
use crate::window::Member;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Written to Outlook (or already there).
    Applied,
    /// Not synced by a product rule (plan, link, participant); not an error.
    Skipped,
    /// Graph refused for now; the change is retried.
    Retrying,
    /// Given up: a dead letter holds the change, with Graph's error.
    DeadLettered,
    /// Not attempted yet (the mailbox was busy); due again shortly.
    Deferred,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Skipped => "skipped",
            Outcome::Retrying => "retrying",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Deferred => "deferred",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub at: Timestamp,
    pub revision: u64,
    /// The mailbox, `user {id}` for a participant without one, or `-` for the whole schedule.
    pub target: String,
    /// create, update, delete, lookup, or plan.
    pub op: String,
    pub outcome: Outcome,
    /// A stable code (`no_mailbox`, `participant_not_linked`, `retries_exhausted`, …).
    pub reason: String,
    /// The same in plain words.
    pub words: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default)]
    pub attempt: u32,
    /// This write applied an operator's replay of a dead letter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
}

impl Entry {
    pub fn new(revision: u64, target: &str, op: &str, outcome: Outcome, reason: &str) -> Self {
        Self {
            at: Timestamp::now(),
            revision,
            target: target.to_string(),
            op: op.to_string(),
            outcome,
            reason: reason.to_string(),
            words: words(reason).to_string(),
            graph_status: None,
            graph_code: None,
            request_id: None,
            attempt: 0,
            replay: false,
        }
    }
}

/// Plain words for every reason code the pipeline records (ledger entries and dead letters).
pub fn words(reason: &str) -> &'static str {
    match reason {
        "created" => "the Outlook copy was created",
        "updated" => "the Outlook copy was updated",
        "deleted" => "the Outlook copy was deleted",
        "already_gone" => "the Outlook copy was already gone",
        "plan_excludes_integration" => {
            "the company's plan (Lite) does not include the Microsoft calendar integration"
        }
        "lite_plus_without_schedule_option" => {
            "Lite Plus includes the integration only with the schedule option"
        }
        "integration_disabled" => "the company's administrator has not turned the integration on",
        "no_credentials" => "the company has not entered its Microsoft app credentials",
        "credentials_unreadable" => {
            "the company's stored client secret cannot be decrypted with the configured keys"
        }
        "unknown_company" => "the company is not set up for the integration",
        "participant_not_linked" => "this participant is not linked to a Microsoft mailbox",
        "change_before_link" => {
            "the change happened before the participant was linked; the next update syncs it"
        }
        "user_auth_failed" => {
            "the participant's mailbox failed verification (auth failed); re-verify the user"
        }
        "no_mailbox" => "the user has no Exchange Online mailbox (or no licence)",
        "unknown_user" => "the address is not a user of the company's Microsoft tenant",
        "policy_denied" => "an application access policy blocks the app from this mailbox",
        "access_denied" => {
            "access denied: admin consent or the Calendars.ReadWrite permission is missing"
        }
        "invalid_secret" => "the company's client secret is wrong",
        "expired_secret" => "the company's client secret has expired; create a new one in Entra",
        "app_not_in_tenant" => "the app is not registered (or consented) in the company's tenant",
        "tenant_not_found" => "the company's tenant id is wrong",
        "invalid_scope" => "the token endpoint refused the requested scope",
        "retries_exhausted" => {
            "Graph kept failing (throttling or outages) until the retry budget ran out"
        }
        "graph_rejected" => "Graph rejected the change as invalid",
        "throttled_or_unavailable" => "Graph throttled or was unavailable; retrying",
        "mailbox_busy" => "another worker was writing to this mailbox; retried shortly",
        "dead_letter_publish_failed" => {
            "the dead letter could not be published to RabbitMQ; the change is retried"
        }
        // Dead letters of the contract (ingest).
        "too_large" => "the event is larger than the contract allows",
        "not_utf8" => "the event is not UTF-8 text",
        "malformed_json" => "the event is not valid JSON",
        "unknown_schema_version" => "the event's schema_version is not one this service reads",
        "missing_field" => "the event lacks a required field",
        "wrong_type" => "a field of the event has the wrong type (or the message is not JSON)",
        "too_long" => "a field of the event is longer than the contract allows",
        "invalid_value" => "a field of the event has a value the contract does not allow",
        "end_before_start" => "the schedule ends before it starts",
        "all_day_with_times" => "an all-day schedule carries times instead of dates",
        "timed_with_dates" => "a timed schedule carries dates instead of times",
        "unknown_time_zone" => "the schedule's time zone is not a known IANA zone",
        "span_too_long" => "the schedule spans longer than the contract allows",
        // Dead letters of the broker (x-death).
        "delivery_limit" => {
            "RabbitMQ gave up after too many redeliveries (x-delivery-limit): workers kept failing on it"
        }
        "rejected" => "a consumer rejected it without requeueing",
        "expired" => "it expired in the queue (message TTL)",
        "maxlen" => "the queue was full (max length)",
        _ => "see the reason code",
    }
}

#[derive(Clone)]
pub struct Ledger {
    redis: ConnectionManager,
    prefix: String,
    retention: Duration,
    max_entries: usize,
    metrics: Option<Arc<Metrics>>,
}

/// KEYS[1] = a schedule's staging hash; ARGV[1] = the replayed revision just applied.
const CLEAR_REPLAY_LUA: &str = r#"
if redis.call('HGET', KEYS[1], 'replay') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'replay')
end
return 0
"#;

impl Ledger {
    pub fn new(
        redis: ConnectionManager,
        prefix: &str,
        retention: Duration,
        max_entries: usize,
    ) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
            retention,
            max_entries,
            metrics: None,
        }
    }

    /// Counts applied replays in `replays_succeeded`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn key(&self, company: &str, schedule: &str) -> String {
        format!("{}:ledger:{company}/{schedule}", self.prefix)
    }

    /// The window's staging hash of a schedule (its `replay` mark is read and cleared here).
    fn staged_key(&self, m: &Member) -> String {
        format!("{}:s:{}", self.prefix, m.encode())
    }

    /// Appends entries (one round trip; two when some entry applied a change, to recognise
    /// replays). Returns how many entries applied a replay.
    pub async fn record(&self, entries: &[(Member, Entry)]) -> Result<u64, redis::RedisError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut r = self.redis.clone();
        let applied: Vec<&Member> = {
            let mut seen = HashSet::new();
            entries
                .iter()
                .filter(|(m, e)| e.outcome == Outcome::Applied && seen.insert(m))
                .map(|(m, _)| m)
                .collect()
        };
        let mut replayed: HashMap<&Member, u64> = HashMap::new();
        if !applied.is_empty() {
            let mut pipe = redis::pipe();
            for m in &applied {
                pipe.hget(self.staged_key(m), "replay");
            }
            let marks: Vec<Option<u64>> = pipe.query_async(&mut r).await?;
            for (m, mark) in applied.into_iter().zip(marks) {
                if let Some(rev) = mark {
                    replayed.insert(m, rev);
                }
            }
        }
        let mut pipe = redis::pipe();
        let mut keys = std::collections::BTreeSet::new();
        let mut cleared = HashSet::new();
        let mut succeeded = 0u64;
        for (m, e) in entries {
            let key = self.key(&m.company_id, &m.schedule_id);
            let mut e = e.clone();
            if e.outcome == Outcome::Applied && replayed.get(m) == Some(&e.revision) {
                e.replay = true;
                succeeded += 1;
                if cleared.insert(m) {
                    pipe.cmd("EVAL")
                        .arg(CLEAR_REPLAY_LUA)
                        .arg(1)
                        .arg(self.staged_key(m))
                        .arg(e.revision)
                        .ignore();
                }
            }
            pipe.lpush(&key, serde_json::to_string(&e).expect("serializable"))
                .ignore();
            keys.insert(key);
        }
        for key in keys {
            pipe.ltrim(&key, 0, self.max_entries as isize - 1).ignore();
            pipe.expire(&key, self.retention.as_secs() as i64).ignore();
        }
        pipe.query_async::<()>(&mut r).await?;
        if succeeded > 0
            && let Some(m) = &self.metrics
        {
            m.replays_succeeded.inc_by(succeeded);
        }
        Ok(succeeded)
    }

    /// Every entry of a schedule, newest first.
    pub async fn show(
        &self,
        company: &str,
        schedule: &str,
    ) -> Result<Vec<Entry>, redis::RedisError> {
        let mut r = self.redis.clone();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(self.key(company, schedule))
            .arg(0)
            .arg(-1)
            .query_async(&mut r)
            .await?;
        Ok(raw
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect())
    }
}

/// Which entries `ledger show` prints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntryFilter {
    /// Entries about this mailbox (case-insensitive) or user id only (whole-schedule entries,
    /// target `-`, are always kept).
    pub target: Option<String>,
    /// The newest this many.
    pub limit: Option<usize>,
}

impl EntryFilter {
    pub fn apply(&self, entries: Vec<Entry>) -> Vec<Entry> {
        let keep = |e: &Entry| {
            self.target.as_ref().is_none_or(|t| {
                e.target == "-"
                    || e.target.eq_ignore_ascii_case(t)
                    || e.target == format!("user {t}")
            })
        };
        entries
            .into_iter()
            .filter(keep)
            .take(self.limit.unwrap_or(usize::MAX))
            .collect()
    }
}

/// Everything about one schedule's sync, to answer "why is this schedule not in Outlook?".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncView {
    pub company: String,
    pub schedule: String,
    /// `syncing`, or why the company's events are skipped (a reason code).
    pub company_status: String,
    /// The newest staged change, if one is kept (staging records last 35 days).
    pub staged: Option<StagedView>,
    /// Each linked participant of the staged change, and each mailbox holding a copy.
    pub participants: Vec<ParticipantView>,
    /// Every recorded copy, by mailbox.
    pub copies: Vec<CopyView>,
    /// The answer, in plain words, one line per point.
    pub why: Vec<String>,
    /// Ledger entries, newest first.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StagedView {
    pub revision: u64,
    /// created, updated or deleted.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_at: Option<Timestamp>,
    /// Waiting for its window: flushed at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<Timestamp>,
    /// Being flushed: the claim's lease runs until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_until: Option<Timestamp>,
    /// An operator's replay of this revision, not applied yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_pending: Option<u64>,
    /// `due`, `flushing` or `flushed`, in words.
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParticipantView {
    pub user: String,
    pub linked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    /// `authenticated` or `auth_failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// The revision of this participant's copy, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_revision: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyView {
    pub mailbox: String,
    pub user: String,
    pub revision: u64,
    /// The Outlook event id; `None` while a create is in flight (only its intent is recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the directory: {0}")]
    Directory(#[from] crate::tenants::DirectoryError),
}

/// `HMGET s:… rev event kind staged_at replay`.
type StagedFields = (
    Option<u64>,
    Option<Vec<u8>>,
    Option<String>,
    Option<u64>,
    Option<u64>,
);

/// Reads everything known about one schedule's sync (a few round trips).
pub async fn sync_view(
    cfg: &Config,
    redis: ConnectionManager,
    company: &str,
    schedule: &str,
    filter: &EntryFilter,
) -> Result<SyncView, LedgerError> {
    let prefix = &cfg.redis.key_prefix;
    let member = Member {
        company_id: company.to_string(),
        schedule_id: schedule.to_string(),
    };
    let mut r = redis.clone();
    let m = member.encode();
    let ((rev, raw, kind, staged_at, replay), due, inflight): (
        StagedFields,
        Option<f64>,
        Option<f64>,
    ) = redis::pipe()
        .cmd("HMGET")
        .arg(format!("{prefix}:s:{m}"))
        .arg(&["rev", "event", "kind", "staged_at", "replay"])
        .cmd("ZSCORE")
        .arg(format!("{prefix}:due"))
        .arg(&m)
        .cmd("ZSCORE")
        .arg(format!("{prefix}:inflight"))
        .arg(&m)
        .query_async(&mut r)
        .await?;
    let ms = |v: f64| Timestamp::from_millisecond(v as i64).ok();
    let event = raw.as_deref().and_then(|b| crate::event::decode(b).ok());
    let staged = rev.map(|revision| {
        let due_at = due.and_then(ms);
        let claimed_until = inflight.and_then(ms);
        let state = match (claimed_until, due_at) {
            (Some(t), _) => format!("being flushed by a worker (its claim runs until {t})"),
            (None, Some(t)) if t > Timestamp::now() => {
                format!("waiting for its window to close at {t}")
            }
            (None, Some(t)) => format!("due since {t}, waiting for a worker"),
            (None, None) => "flushed (nothing due)".to_string(),
        };
        StagedView {
            revision,
            kind: match kind.as_deref() {
                Some("c") => "created",
                Some("u") => "updated",
                Some("d") => "deleted",
                _ => "unknown",
            }
            .to_string(),
            title: event
                .as_ref()
                .and_then(|e| e.schedule.as_ref())
                .map(|s| s.title.clone()),
            staged_at: staged_at.and_then(|v| Timestamp::from_millisecond(v as i64).ok()),
            due_at,
            claimed_until,
            replay_pending: replay,
            state,
        }
    });
    let directory = Directory::from_config(redis.clone(), cfg);
    let company_status = match directory.company(company).await? {
        None => "unknown_company".to_string(),
        Some(c) => match c.sync_allowed() {
            Ok(()) => "syncing".to_string(),
            Err(why) => why.code().to_string(),
        },
    };
    let users = directory.users(company).await?;
    let copies: BTreeMap<String, crate::flush::Copy> = Copies::new(redis.clone(), prefix)
        .all(std::slice::from_ref(&member))
        .await?
        .pop()
        .unwrap_or_default();
    let ledger = Ledger::new(redis, prefix, Duration::from_secs(1), 1);
    let all_entries = ledger.show(company, schedule).await?;

    // Participants: those of the staged change, then owners of copies not among them.
    let mut people: Vec<String> = event
        .as_ref()
        .and_then(|e| e.schedule.as_ref())
        .map(|s| s.participants().into_iter().map(str::to_string).collect())
        .unwrap_or_default();
    for c in copies.values() {
        if !people.contains(&c.user) {
            people.push(c.user.clone());
        }
    }
    let participants: Vec<ParticipantView> = people
        .iter()
        .map(|p| {
            let u = users.get(p);
            let mailbox = u.map(|u| u.mailbox_key());
            ParticipantView {
                user: p.clone(),
                linked: u.is_some(),
                copy_revision: mailbox
                    .as_ref()
                    .and_then(|mb| copies.get(mb))
                    .filter(|c| c.event_id.is_some())
                    .map(|c| c.rev),
                mailbox,
                status: u.map(|u| match u.status {
                    UserStatus::Authenticated => "authenticated".to_string(),
                    UserStatus::AuthFailed => "auth_failed".to_string(),
                }),
                status_reason: u.and_then(|u| u.reason.clone()),
            }
        })
        .collect();
    let copies: Vec<CopyView> = copies
        .into_iter()
        .map(|(mailbox, c)| CopyView {
            mailbox,
            user: c.user,
            revision: c.rev,
            event_id: c.event_id,
        })
        .collect();
    let why = explain(
        &company_status,
        staged.as_ref(),
        &participants,
        &copies,
        &all_entries,
        schedule,
    );
    Ok(SyncView {
        company: company.to_string(),
        schedule: schedule.to_string(),
        company_status,
        staged,
        participants,
        copies,
        why,
        entries: filter.apply(all_entries),
    })
}

/// The answer in words: the schedule's state, then each participant's.
fn explain(
    company_status: &str,
    staged: Option<&StagedView>,
    participants: &[ParticipantView],
    copies: &[CopyView],
    entries: &[Entry],
    schedule: &str,
) -> Vec<String> {
    let mut why = Vec::new();
    if company_status != "syncing" {
        why.push(format!(
            "the company's schedules are not synced: {} ({company_status})",
            words(company_status)
        ));
    }
    let Some(s) = staged else {
        if entries.is_empty() {
            why.push(
                "no change of this schedule reached the service (none is staged, the ledger is empty): was it published?"
                    .into(),
            );
        } else {
            why.push("its staging record has expired; the ledger below is what is left".into());
        }
        return why;
    };
    why.push(format!(
        "revision {} ({}) is the newest change; {}",
        s.revision, s.kind, s.state
    ));
    if let Some(r) = s.replay_pending {
        why.push(format!(
            "an operator's replay of revision {r} is waiting to be applied"
        ));
    }
    // The newest entry per target.
    let latest = |target: &str| {
        entries
            .iter()
            .find(|e| e.target.eq_ignore_ascii_case(target) && e.outcome != Outcome::Deferred)
    };
    if s.kind == "deleted" {
        if copies.is_empty() {
            why.push("deleted: no Outlook copy is left".into());
        }
        for c in copies {
            why.push(format!(
                "{} <{}>: its copy is still recorded (revision {}); the delete has not been applied yet",
                c.user, c.mailbox, c.revision
            ));
        }
        return why;
    }
    for p in participants {
        let Some(mailbox) = &p.mailbox else {
            why.push(format!(
                "{}: no copy, {}",
                p.user,
                words("participant_not_linked")
            ));
            continue;
        };
        let who = format!("{} <{mailbox}>", p.user);
        if p.copy_revision.is_some_and(|r| r >= s.revision) {
            why.push(format!(
                "{who}: in Outlook at revision {}",
                p.copy_revision.unwrap_or_default()
            ));
            continue;
        }
        let has = match p.copy_revision {
            Some(r) => format!("its copy is at revision {r}, behind"),
            None => "not in Outlook".to_string(),
        };
        if p.status.as_deref() == Some("auth_failed") {
            let reason = p.status_reason.as_deref().unwrap_or("");
            why.push(format!(
                "{who}: {has}: the user is auth failed ({reason}: {}); fix the mailbox and re-verify the user, then `outlook-sync dlq replay --schedule {schedule} --mailbox {mailbox}`",
                words(reason)
            ));
            continue;
        }
        match latest(mailbox).or_else(|| latest(&format!("user {}", p.user))) {
            Some(e) if e.outcome == Outcome::DeadLettered => why.push(format!(
                "{who}: {has}: dead-lettered at revision {} ({}: {}){}; fix the cause, then `outlook-sync dlq replay --schedule {schedule} --mailbox {mailbox}`",
                e.revision,
                e.reason,
                e.words,
                graph_words(e)
            )),
            Some(e) if e.outcome == Outcome::Applied && e.revision >= s.revision => why.push(
                format!("{who}: {} at revision {}", e.words, e.revision),
            ),
            Some(e) => why.push(format!(
                "{who}: {has}: last attempt {} at revision {} ({}: {}){}",
                e.outcome.as_str(),
                e.revision,
                e.reason,
                e.words,
                graph_words(e)
            )),
            None => why.push(format!("{who}: {has}: no attempt recorded yet")),
        }
    }
    why
}

fn graph_words(e: &Entry) -> String {
    match (e.graph_status, &e.graph_code, &e.request_id) {
        (None, None, None) => String::new(),
        (s, c, r) => {
            let mut out = String::from(" [Graph");
            if let Some(s) = s {
                let _ = write!(out, " {s}");
            }
            if let Some(c) = c {
                let _ = write!(out, " {c}");
            }
            if let Some(r) = r {
                let _ = write!(out, ", request-id {r}");
            }
            out.push(']');
            out
        }
    }
}

/// The view as text for a terminal.
pub fn render(v: &SyncView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "schedule {}/{}", v.company, v.schedule);
    if let Some(s) = &v.staged {
        let title = s
            .title
            .as_deref()
            .map(|t| format!(" \"{t}\""))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  staged: revision {} ({}){title}, staged {}",
            s.revision,
            s.kind,
            s.staged_at.map_or("-".into(), |t| t.to_string())
        );
    } else {
        let _ = writeln!(out, "  staged: nothing");
    }
    let _ = writeln!(out, "  company: {}", v.company_status);
    let _ = writeln!(out, "\nwhy:");
    for w in &v.why {
        let _ = writeln!(out, "  - {w}");
    }
    if !v.participants.is_empty() {
        let _ = writeln!(out, "\nparticipants:");
        let rows: Vec<Vec<String>> = v
            .participants
            .iter()
            .map(|p| {
                vec![
                    p.user.clone(),
                    p.mailbox.clone().unwrap_or_else(|| "-".into()),
                    match (&p.status, &p.status_reason) {
                        (None, _) => "not linked".into(),
                        (Some(s), Some(r)) if s == "auth_failed" => format!("auth_failed ({r})"),
                        (Some(s), _) => s.clone(),
                    },
                    p.copy_revision
                        .map_or("-".into(), |r| format!("revision {r}")),
                ]
            })
            .collect();
        out.push_str(&crate::deadletter::table::table(
            &["USER", "MAILBOX", "STATUS", "OUTLOOK COPY"],
            &rows,
        ));
    }
    if !v.copies.is_empty() {
        let _ = writeln!(out, "\ncopies:");
        let rows: Vec<Vec<String>> = v
            .copies
            .iter()
            .map(|c| {
                vec![
                    c.mailbox.clone(),
                    c.user.clone(),
                    c.revision.to_string(),
                    c.event_id.as_deref().map_or_else(
                        || "(create in flight: intent only)".to_string(),
                        |id| match id.char_indices().nth(24) {
                            Some((i, _)) => format!("{}…", &id[..i]),
                            None => id.to_string(),
                        },
                    ),
                ]
            })
            .collect();
        out.push_str(&crate::deadletter::table::table(
            &["MAILBOX", "USER", "REVISION", "OUTLOOK EVENT"],
            &rows,
        ));
    }
    let _ = writeln!(out, "\nledger (newest first):");
    if v.entries.is_empty() {
        let _ = writeln!(out, "  (no entries)");
    } else {
        let rows: Vec<Vec<String>> = v
            .entries
            .iter()
            .map(|e| {
                let mut what = format!("{}: {}", e.reason, e.words);
                what.push_str(&graph_words(e));
                if e.attempt > 0 {
                    let _ = write!(what, " (attempt {})", e.attempt);
                }
                if e.replay {
                    what.push_str(" (replay)");
                }
                vec![
                    e.at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                    e.revision.to_string(),
                    e.target.clone(),
                    e.op.clone(),
                    e.outcome.as_str().to_string(),
                    what,
                ]
            })
            .collect();
        out.push_str(&crate::deadletter::table::table(
            &["AT (UTC)", "REV", "TARGET", "OP", "OUTCOME", "WHY"],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_the_pipeline_records_has_words() {
        for code in [
            "created",
            "updated",
            "deleted",
            "already_gone",
            "participant_not_linked",
            "change_before_link",
            "user_auth_failed",
            "no_mailbox",
            "policy_denied",
            "retries_exhausted",
            "graph_rejected",
            "mailbox_busy",
            "dead_letter_publish_failed",
            "end_before_start",
            "delivery_limit",
            "credentials_unreadable",
        ] {
            assert_ne!(words(code), "see the reason code", "{code}");
        }
    }

    #[test]
    fn the_entry_filter_keeps_whole_schedule_entries_and_the_newest() {
        let e = |target: &str| Entry::new(1, target, "plan", Outcome::Skipped, "x");
        let all = vec![
            e("A@x.com"),
            e("-"),
            e("user u-1"),
            e("b@x.com"),
            e("a@x.com"),
        ];
        let f = EntryFilter {
            target: Some("a@X.com".into()),
            limit: Some(2),
        };
        let got: Vec<String> = f.apply(all.clone()).into_iter().map(|e| e.target).collect();
        assert_eq!(got, vec!["A@x.com", "-"]);
        let f = EntryFilter {
            target: Some("u-1".into()),
            limit: None,
        };
        let got: Vec<String> = f.apply(all).into_iter().map(|e| e.target).collect();
        assert_eq!(got, vec!["-", "user u-1"]);
    }
}
