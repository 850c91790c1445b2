//! The answer to "why is this schedule (not) in Outlook?": the staged state, the company, each
//! participant, each copy and the ledger's entries, in one view ([`sync_view`]) and in words
//! ([`render`]).

use std::fmt::Write as _;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Entry, EntryFilter, Ledger, Outcome, words};
use crate::config::Config;
use crate::store::{self, Copies, Member};
use crate::tenants::{Directory, UserStatus};
use crate::terminal::{self, escape};

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

/// Reads everything known about one schedule's sync (a few round trips).
pub async fn sync_view(
    cfg: &Config,
    redis: crate::store::Redis,
    company: &str,
    schedule: &str,
    filter: &EntryFilter,
) -> Result<SyncView, LedgerError> {
    let member = Member::new(company, schedule);
    let ledger = Ledger::from_config(redis.clone(), cfg);
    let seen = ledger.windows.inspect(&member).await?;
    let event = seen
        .raw
        .as_deref()
        .and_then(|b| crate::event::decode(b).ok());
    let staged = seen
        .revision
        .map(|revision| staged_view(revision, &seen, event.as_ref()));
    // The directory is context: without it (PostgreSQL down) the view still shows what Redis
    // holds, and says the company's status is unknown for now.
    let directory = Directory::from_config(cfg);
    let read = async {
        let status = match directory.company(company).await? {
            None => "unknown_company".to_string(),
            Some(c) => match c.sync_allowed() {
                Ok(()) => "syncing".to_string(),
                Err(why) => why.code().to_string(),
            },
        };
        Ok::<_, crate::tenants::DirectoryError>((status, directory.users(company).await?))
    };
    let (company_status, users) = match read.await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(company, error = %e, "ledger: the directory cannot be read; its part of the view is left out");
            ("directory_unavailable".to_string(), Default::default())
        }
    };
    let copies = Copies::new(redis, store::keys(cfg))
        .all(std::slice::from_ref(&member))
        .await?
        .pop()
        .unwrap_or_default();
    let all_entries = ledger.show(&member).await?;

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

/// The staged change as the view shows it.
fn staged_view(
    revision: u64,
    seen: &crate::window::Inspection,
    event: Option<&crate::event::ScheduleEvent>,
) -> StagedView {
    let state = match (seen.claimed_until, seen.due_at) {
        (Some(t), _) => format!("being flushed by a worker (its claim runs until {t})"),
        (None, Some(t)) if t > Timestamp::now() => {
            format!("waiting for its window to close at {t}")
        }
        (None, Some(t)) => format!("due since {t}, waiting for a worker"),
        (None, None) => "flushed (nothing due)".to_string(),
    };
    StagedView {
        revision,
        kind: seen
            .kind
            .map(|k| match k {
                crate::event::EventType::Created => "created",
                crate::event::EventType::Updated => "updated",
                crate::event::EventType::Deleted => "deleted",
            })
            .unwrap_or("unknown")
            .to_string(),
        title: event
            .and_then(|e| e.schedule.as_ref())
            .map(|s| s.title.clone()),
        staged_at: seen.staged_at,
        due_at: seen.due_at,
        claimed_until: seen.claimed_until,
        replay_pending: seen.replay,
        state,
    }
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
                "{who}: {has}: the user is marked auth_failed ({reason}: {}), so the flush skips this mailbox; fix the mailbox and verify the user again, then run `outlook-sync dlq replay --schedule {schedule} --mailbox {mailbox}`",
                words(reason)
            ));
            continue;
        }
        match latest(mailbox).or_else(|| latest(&format!("user {}", p.user))) {
            Some(e) if e.outcome == Outcome::DeadLettered => why.push(format!(
                "{who}: {has}: revision {} became a dead letter ({}: {}){}; fix the cause, then run `outlook-sync dlq replay --schedule {schedule} --mailbox {mailbox}`",
                e.revision,
                e.reason,
                e.words,
                graph_words(e)
            )),
            Some(e) if e.outcome == Outcome::Applied && e.revision >= s.revision => why.push(
                format!("{who}: {} at revision {}", e.words, e.revision),
            ),
            Some(e) => why.push(format!(
                "{who}: {has}: the last attempt, at revision {}, {} ({}: {}){}",
                e.revision,
                outcome_words(e.outcome),
                e.reason,
                e.words,
                graph_words(e)
            )),
            None => why.push(format!("{who}: {has}: no attempt recorded yet")),
        }
    }
    why
}

/// How an attempt ended, as the end of a sentence.
fn outcome_words(o: Outcome) -> &'static str {
    match o {
        Outcome::Applied => "was applied",
        Outcome::Skipped => "was skipped",
        Outcome::Retrying => "failed and is being retried",
        Outcome::DeadLettered => "became a dead letter",
        Outcome::Deferred => "was put off because the mailbox was busy",
    }
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

/// The view as text for a terminal: the staged change, the answer in words, then the
/// participants, the copies and the ledger as tables. Every value is escaped (a title or a
/// Graph message may hold control characters) and columns align by display width.
pub fn render(v: &SyncView) -> String {
    let mut out = heading(v);
    let _ = writeln!(out, "\nwhy:");
    for w in &v.why {
        let _ = writeln!(out, "  - {}", escape(w));
    }
    if !v.participants.is_empty() {
        let _ = writeln!(out, "\nparticipants:");
        out.push_str(&participants_table(&v.participants));
    }
    if !v.copies.is_empty() {
        let _ = writeln!(out, "\ncopies:");
        out.push_str(&copies_table(&v.copies));
    }
    let _ = writeln!(out, "\nledger (newest first):");
    if v.entries.is_empty() {
        let _ = writeln!(out, "  (no entries)");
    } else {
        out.push_str(&entries_table(&v.entries));
    }
    out
}

/// The schedule, its staged change and the company's state.
fn heading(v: &SyncView) -> String {
    let mut out = format!("schedule {}/{}\n", escape(&v.company), escape(&v.schedule));
    match &v.staged {
        Some(s) => {
            let title = s
                .title
                .as_deref()
                .map(|t| format!(" \"{}\"", escape(t)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  staged: revision {} ({}){title}, staged {}",
                s.revision,
                s.kind,
                s.staged_at.map_or("-".into(), |t| t.to_string())
            );
        }
        None => {
            let _ = writeln!(out, "  staged: nothing");
        }
    }
    let _ = writeln!(out, "  company: {}", escape(&v.company_status));
    out
}

fn participants_table(participants: &[ParticipantView]) -> String {
    let rows: Vec<Vec<String>> = participants
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
    terminal::table(&["USER", "MAILBOX", "STATUS", "OUTLOOK COPY"], &rows)
}

fn copies_table(copies: &[CopyView]) -> String {
    let rows: Vec<Vec<String>> = copies
        .iter()
        .map(|c| {
            vec![
                c.mailbox.clone(),
                c.user.clone(),
                c.revision.to_string(),
                c.event_id.as_deref().map_or_else(
                    || "(create in flight: only its intent is recorded)".to_string(),
                    |id| terminal::truncate(id, 25),
                ),
            ]
        })
        .collect();
    terminal::table(&["MAILBOX", "USER", "REVISION", "OUTLOOK EVENT"], &rows)
}

fn entries_table(entries: &[Entry]) -> String {
    let rows: Vec<Vec<String>> = entries
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
    terminal::table(
        &["AT (UTC)", "REV", "TARGET", "OP", "OUTCOME", "WHY"],
        &rows,
    )
}
