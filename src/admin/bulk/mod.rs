//! Bulk linking from a CSV file: `cyzen_user_id,email[,action]` (action `link`, the default, or
//! `unlink`; an optional header row). A dry run (the preflight) says per row what would happen
//! and why; the real run does it and says what happened.
//!
//! Each address to link is checked through Graph (`GET /users/{address}` and its `/calendar`)
//! with at most `admin.bulk_concurrency` checks in flight. Rows name different mailboxes (a
//! repeated address is a `duplicate_row`), so no mailbox sees more than one request at a time;
//! throttled answers wait for `Retry-After` (`Admin::check_mailbox`). Rows that fail a check
//! are not linked by the real run (they are reported `skipped` with the reason).

mod file;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt;
use jiff::Timestamp;
use serde::Serialize;

pub use self::file::{Action, Row, decode_csv, parse_csv};
use super::input::{address_problem, is_valid_id};
use super::messages::Reason;
use super::service::{Admin, AdminError, Progress, ProgressFn, no_progress};
use super::users::MailboxCheck;
use crate::graph::client::Credentials;
use crate::tenants::{LinkedUser, UserStatus, mailbox_key};

/// Rows accepted in one file.
pub const MAX_ROWS: usize = 50_000;

#[derive(Debug, Clone, Copy, Default)]
pub struct BulkOptions {
    /// Only say what would happen.
    pub dry_run: bool,
    /// Unlink rows also delete the user's copies.
    pub delete_copies: bool,
}

/// What happened (or would happen) to one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    WouldLink,
    WouldRelink,
    WouldUnlink,
    Linked,
    Relinked,
    Unlinked,
    /// Nothing to do (already linked to this address and authenticated).
    Unchanged,
    /// A dry run's row that would not be applied, with the reason.
    Error,
    /// A real run's row that was not applied, with the reason.
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    pub line: usize,
    pub user_id: String,
    pub email: String,
    pub action: Option<Action>,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BulkReport {
    pub dry_run: bool,
    pub rows: usize,
    /// Rows per outcome.
    pub summary: BTreeMap<Outcome, usize>,
    /// Rows per reason code (errors and skips).
    pub reasons: BTreeMap<String, usize>,
    pub results: Vec<RowResult>,
}

/// What a row needs, decided before any request to Graph.
enum RowPlan {
    Done(Outcome, Option<Reason>),
    Check { relink: bool },
    Unlink,
}

/// A row that is not applied: `error` in a dry run, `skipped` in a real one.
fn not_applied(dry_run: bool) -> Outcome {
    if dry_run {
        Outcome::Error
    } else {
        Outcome::Skipped
    }
}

/// Decides what each row needs, without Graph: refusals (with their reason), unlinks, rows
/// already done, and the addresses to check.
fn plan_rows(rows: &[Row], existing: &HashMap<String, LinkedUser>, dry_run: bool) -> Vec<RowPlan> {
    let unlinking: HashSet<&str> = rows
        .iter()
        .filter(|r| r.action == Ok(Action::Unlink))
        .map(|r| r.user_id.as_str())
        .collect();
    let by_address: HashMap<String, &LinkedUser> =
        existing.values().map(|u| (u.mailbox_key(), u)).collect();
    let mut seen_users = HashSet::new();
    let mut seen_addresses = HashSet::new();
    let mut plans = Vec::with_capacity(rows.len());
    for r in rows {
        let err = |code: &str, detail: Option<String>| {
            RowPlan::Done(not_applied(dry_run), Some(Reason::new(code, detail)))
        };
        let plan = if r.user_id.is_empty() {
            err("missing_user_id", None)
        } else if !is_valid_id(&r.user_id) {
            err("invalid_user_id", None)
        } else if let Err(a) = &r.action {
            err("invalid_action", Some(a.clone()))
        } else if !seen_users.insert(r.user_id.clone()) {
            err("duplicate_row", Some(format!("user {}", r.user_id)))
        } else if r.action == Ok(Action::Unlink) {
            if existing.contains_key(&r.user_id) {
                RowPlan::Unlink
            } else {
                err("not_linked", None)
            }
        } else if let Some(code) = address_problem(&r.email) {
            err(code, None)
        } else if !seen_addresses.insert(mailbox_key(&r.email)) {
            err("duplicate_row", Some(format!("address {}", r.email)))
        } else {
            let key = mailbox_key(&r.email);
            match (existing.get(&r.user_id), by_address.get(&key)) {
                (_, Some(owner))
                    if owner.user_id != r.user_id
                        && !unlinking.contains(owner.user_id.as_str()) =>
                {
                    err("address_in_use", Some(format!("user {}", owner.user_id)))
                }
                (Some(u), _)
                    if u.mailbox_key() == mailbox_key(&r.email)
                        && u.status == UserStatus::Authenticated =>
                {
                    RowPlan::Done(
                        Outcome::Unchanged,
                        Some(Reason::new("already_linked", None)),
                    )
                }
                (Some(u), _) => RowPlan::Check {
                    relink: u.mailbox_key() != mailbox_key(&r.email),
                },
                (None, _) => RowPlan::Check { relink: false },
            }
        };
        plans.push(plan);
    }
    plans
}

/// Each row's result from its plan and its address check; also which rows a real run links
/// and unlinks.
fn row_results(
    rows: &[Row],
    plans: Vec<RowPlan>,
    checked: &HashMap<usize, MailboxCheck>,
    dry_run: bool,
) -> (Vec<RowResult>, Vec<usize>, Vec<usize>) {
    let mut results = Vec::with_capacity(rows.len());
    let mut to_link = Vec::new();
    let mut to_unlink = Vec::new();
    for (i, (r, plan)) in rows.iter().zip(plans).enumerate() {
        let (outcome, reason) = match plan {
            RowPlan::Done(o, reason) => (o, reason),
            RowPlan::Unlink if dry_run => (Outcome::WouldUnlink, None),
            RowPlan::Unlink => {
                to_unlink.push(i);
                (Outcome::Unlinked, None)
            }
            RowPlan::Check { relink } => match &checked[&i] {
                MailboxCheck::Reachable => {
                    if !dry_run {
                        to_link.push(i);
                    }
                    let o = match (dry_run, relink) {
                        (true, false) => Outcome::WouldLink,
                        (true, true) => Outcome::WouldRelink,
                        (false, false) => Outcome::Linked,
                        (false, true) => Outcome::Relinked,
                    };
                    (o, None)
                }
                MailboxCheck::Problem { code, detail } => (
                    not_applied(dry_run),
                    Some(Reason::new(code, Some(detail.clone()))),
                ),
            },
        };
        results.push(RowResult {
            line: r.line,
            user_id: r.user_id.clone(),
            email: r.email.clone(),
            action: r.action.clone().ok(),
            outcome,
            reason,
        });
    }
    (results, to_link, to_unlink)
}

/// The lines that could not be read as rows, as results.
fn malformed_rows(bad: Vec<(usize, String)>, dry_run: bool) -> impl Iterator<Item = RowResult> {
    bad.into_iter().map(move |(line, message)| RowResult {
        line,
        user_id: String::new(),
        email: String::new(),
        action: None,
        outcome: not_applied(dry_run),
        reason: Some(Reason::new("malformed_row", Some(message))),
    })
}

/// The results in line order, with the rows per outcome and per reason code (errors and skips).
fn report(mut results: Vec<RowResult>, dry_run: bool) -> BulkReport {
    results.sort_by_key(|r| r.line);
    let mut summary = BTreeMap::new();
    let mut reasons = BTreeMap::new();
    for r in &results {
        *summary.entry(r.outcome).or_insert(0) += 1;
        if let Some(reason) = &r.reason
            && matches!(r.outcome, Outcome::Error | Outcome::Skipped)
        {
            *reasons.entry(reason.code.clone()).or_insert(0) += 1;
        }
    }
    BulkReport {
        dry_run,
        rows: results.len(),
        summary,
        reasons,
        results,
    }
}

impl Admin {
    /// Runs (or, with `dry_run`, previews) a bulk file against the company.
    pub async fn bulk(
        &self,
        company: &str,
        csv: &str,
        opts: BulkOptions,
        progress: ProgressFn,
    ) -> Result<BulkReport, AdminError> {
        let c = self.load(company).await?;
        let (rows, bad) = parse_csv(csv);
        if rows.len() + bad.len() > MAX_ROWS {
            return Err(AdminError::Invalid {
                code: "too_many_rows",
                message: format!(
                    "the file has {} rows; at most {MAX_ROWS} per upload",
                    rows.len() + bad.len()
                ),
            });
        }
        let creds = match (&c.credentials, &c.credentials_error) {
            (Some(sc), _) => sc.credentials(),
            _ => {
                return Err(AdminError::Conflict {
                    code: "no_credentials",
                    message: format!("company {company:?} has no usable Microsoft 365 credentials"),
                });
            }
        };
        let existing = self.directory.users(company).await?;
        let plans = plan_rows(&rows, &existing, opts.dry_run);
        let checks: Vec<usize> = (0..rows.len())
            .filter(|&i| matches!(plans[i], RowPlan::Check { .. }))
            .collect();
        if !checks.is_empty() {
            self.first_token(company, &creds).await?;
        }
        let checked = self
            .check_rows(company, &creds, &rows, &checks, &progress)
            .await;
        let (mut results, to_link, to_unlink) = row_results(&rows, plans, &checked, opts.dry_run);
        results.extend(malformed_rows(bad, opts.dry_run));
        if !opts.dry_run {
            // Unlinks first: an address may move from an unlinked user to a linked one.
            self.unlink_rows(company, &rows, to_unlink, opts, &mut results)
                .await;
            self.link_rows(company, &rows, &to_link, &existing).await?;
        }
        let total = rows.len();
        let report = report(results, opts.dry_run);
        progress(Progress { done: total, total });
        tracing::info!(company, dry_run = opts.dry_run, rows = report.rows, summary = ?report.summary, "admin: bulk file processed");
        Ok(report)
    }

    /// One token first: broken credentials stop here, not once per row.
    async fn first_token(&self, company: &str, creds: &Credentials) -> Result<(), AdminError> {
        match self.graph.token(company, creds).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_retryable() => Err(AdminError::Unavailable {
                retry_after: e.wait_hint(),
                message: e.to_string(),
            }),
            Err(e) => Err(AdminError::Conflict {
                code: "credentials_invalid",
                message: format!("the company's credentials do not work: {e}"),
            }),
        }
    }

    /// Checks the addresses of the rows `checks` names, `admin.bulk_concurrency` at a time,
    /// reporting progress over all rows (those that need no check count as done).
    async fn check_rows(
        &self,
        company: &str,
        creds: &Credentials,
        rows: &[Row],
        checks: &[usize],
        progress: &ProgressFn,
    ) -> HashMap<usize, MailboxCheck> {
        let total = rows.len();
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(total - checks.len()));
        progress(Progress {
            done: done.load(std::sync::atomic::Ordering::Relaxed),
            total,
        });
        futures_util::stream::iter(checks.iter().copied())
            .map(|i| {
                let (done, progress) = (done.clone(), progress.clone());
                let email = rows[i].email.clone();
                async move {
                    let check = match self.check_mailbox(company, creds, &email).await {
                        Ok(c) => c,
                        Err(e) => MailboxCheck::Problem {
                            code: "verification_unavailable",
                            detail: e.to_string(),
                        },
                    };
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    progress(Progress { done: n, total });
                    (i, check)
                }
            })
            .buffer_unordered(self.cfg.admin.bulk_concurrency)
            .collect()
            .await
    }

    /// Unlinks the users of the rows `to_unlink` names; a row whose unlink fails is `skipped`
    /// with the reason.
    async fn unlink_rows(
        &self,
        company: &str,
        rows: &[Row],
        to_unlink: Vec<usize>,
        opts: BulkOptions,
        results: &mut [RowResult],
    ) {
        let unlinked: Vec<(usize, Result<(), AdminError>)> = futures_util::stream::iter(to_unlink)
            .map(|i| {
                let user = rows[i].user_id.clone();
                async move {
                    let r = self
                        .unlink_user(company, &user, opts.delete_copies, no_progress())
                        .await
                        .map(|_| ());
                    (i, r)
                }
            })
            .buffer_unordered(self.cfg.admin.bulk_concurrency)
            .collect()
            .await;
        for (i, r) in unlinked {
            if let Err(e) = r {
                results[i].outcome = Outcome::Skipped;
                results[i].reason = Some(Reason::new(e.code(), Some(e.to_string())));
            }
        }
    }

    /// Links the users of the rows `to_link` names (their addresses checked), 500 per write; an
    /// unchanged link keeps its history.
    async fn link_rows(
        &self,
        company: &str,
        rows: &[Row],
        to_link: &[usize],
        existing: &HashMap<String, LinkedUser>,
    ) -> Result<(), AdminError> {
        let now = Timestamp::now();
        let users: Vec<LinkedUser> = to_link
            .iter()
            .map(|&i| {
                let r = &rows[i];
                let previous = existing
                    .get(&r.user_id)
                    .filter(|p| p.mailbox_key() == mailbox_key(&r.email));
                LinkedUser {
                    user_id: r.user_id.clone(),
                    mailbox: r.email.clone(),
                    linked_at: previous.map(|p| p.linked_at).unwrap_or(now),
                    status: UserStatus::Authenticated,
                    reason: None,
                    last_sync_at: previous.and_then(|p| p.last_sync_at),
                    last_error: None,
                }
            })
            .collect();
        for chunk in users.chunks(500) {
            self.directory.put_users(company, chunk).await?;
        }
        Ok(())
    }
}
