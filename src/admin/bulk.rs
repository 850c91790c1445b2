//! Bulk linking from a CSV file: `cyzen_user_id,email[,action]` (action `link`, the default, or
//! `unlink`; an optional header row). A dry run (the preflight) says per row what would happen
//! and why; the real run does it and says what happened.
//!
//! Each address to link is checked through Graph (`GET /users/{address}` and its `/calendar`)
//! with at most `admin.bulk_concurrency` checks in flight. Rows name different mailboxes (a
//! repeated address is a `duplicate_row`), so no mailbox sees more than one request at a time;
//! throttled answers wait for `Retry-After` (`Admin::check_mailbox`). Rows that fail a check
//! are not linked by the real run (they are reported `skipped` with the reason).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt;
use jiff::Timestamp;
use serde::Serialize;

use super::service::{
    Admin, AdminError, MailboxCheck, Progress, ProgressFn, Reason, address_problem, is_valid_id,
};
use crate::tenants::{LinkedUser, UserStatus, mailbox_key};

/// Rows accepted in one file.
pub const MAX_ROWS: usize = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Link,
    Unlink,
}

/// One parsed row (1-based line number in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub line: usize,
    pub user_id: String,
    pub email: String,
    pub action: Result<Action, String>,
}

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

/// The text of an uploaded CSV file: UTF-8 (with or without a BOM), UTF-16 with a BOM, or
/// Shift_JIS as Windows writes it (CP932: what Excel in Japan saves as "CSV (コンマ区切り)").
/// Bytes that are none of these are refused (`invalid_csv`), never guessed at or replaced.
pub fn decode_csv(bytes: &[u8]) -> Result<String, AdminError> {
    let refuse = |what: &str| AdminError::Invalid {
        code: "invalid_csv",
        message: format!(
            "the CSV file {what}: save it from Excel as \"CSV UTF-8 (Comma delimited)\" or \"CSV (Comma delimited)\" (Shift_JIS), and upload it again"
        ),
    };
    if let Some((encoding, bom)) = encoding_rs::Encoding::for_bom(bytes) {
        return encoding
            .decode_without_bom_handling_and_without_replacement(&bytes[bom..])
            .map(|t| t.into_owned())
            .ok_or_else(|| {
                refuse(&format!(
                    "starts with a {} byte-order mark but is not {} text",
                    encoding.name(),
                    encoding.name()
                ))
            });
    }
    if let Ok(t) = std::str::from_utf8(bytes) {
        return Ok(t.to_string());
    }
    // encoding_rs's Shift_JIS is the WHATWG one, i.e. Windows-31J (CP932) with its NEC and IBM
    // extensions (①, ㈱, 髙 …).
    encoding_rs::SHIFT_JIS
        .decode_without_bom_handling_and_without_replacement(bytes)
        .map(|t| t.into_owned())
        .ok_or_else(|| refuse("is neither UTF-8 nor Shift_JIS (CP932) text"))
}

/// Which column holds what.
#[derive(Debug, Clone, Copy)]
struct Columns {
    user: usize,
    email: usize,
    action: Option<usize>,
    /// Named by a header row: extra columns (a name, a department) are ignored.
    from_header: bool,
}

const POSITIONAL: Columns = Columns {
    user: 0,
    email: 1,
    action: Some(2),
    from_header: false,
};

/// A header cell folded for comparison: full-width ASCII to half-width, lowercase, without
/// spaces, `_`, `-`, `・`.
fn fold(cell: &str) -> String {
    cell.chars()
        .map(|c| match c {
            '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xfee0).unwrap_or(c),
            '\u{3000}' => ' ',
            c => c,
        })
        .flat_map(char::to_lowercase)
        .filter(|c| !matches!(c, ' ' | '_' | '-' | '・' | '(' | ')' | '（' | '）'))
        .collect()
}

const USER_HEADERS: &[&str] = &[
    "cyzenuserid",
    "userid",
    "cyzenid",
    "ユーザーid",
    "ユーザid",
    "cyzenユーザーid",
    "cyzenユーザid",
    "ユーザー",
];
const EMAIL_HEADERS: &[&str] = &[
    "email",
    "mail",
    "emailaddress",
    "mailaddress",
    "mailbox",
    "upn",
    "メールアドレス",
    "メール",
    "eメール",
    "eメールアドレス",
    "microsoftアカウント",
];
const ACTION_HEADERS: &[&str] = &["action", "操作", "処理", "アクション"];

/// The columns a header row names, if `cells` is a header row (it names a user or an email
/// column, in English or Japanese).
fn header(cells: &[&str]) -> Option<Columns> {
    let find = |names: &[&str]| cells.iter().position(|c| names.contains(&fold(c).as_str()));
    let (user, email) = (find(USER_HEADERS), find(EMAIL_HEADERS));
    if user.is_none() && email.is_none() {
        return None;
    }
    Some(Columns {
        user: user.unwrap_or(0),
        email: email.unwrap_or(1),
        action: find(ACTION_HEADERS),
        from_header: true,
    })
}

/// The 1-based line a record starts on, from its byte offset. (After a CRLF the csv crate
/// places the next record at the `\n`, and counts lines accordingly: skip line ends first.)
fn line_at(text: &str, byte: u64) -> usize {
    let bytes = text.as_bytes();
    let mut start = usize::try_from(byte).unwrap_or(usize::MAX).min(bytes.len());
    while start < bytes.len() && matches!(bytes[start], b'\r' | b'\n') {
        start += 1;
    }
    bytes[..start].iter().filter(|b| **b == b'\n').count() + 1
}

/// `link` (the default, also `連携`) or `unlink` (also `解除`, `連携解除`).
fn action(cell: &str) -> Result<Action, String> {
    match fold(cell).as_str() {
        "" | "link" | "連携" | "リンク" => Ok(Action::Link),
        "unlink" | "解除" | "連携解除" | "リンク解除" => Ok(Action::Unlink),
        other => Err(other.to_string()),
    }
}

/// Parses the CSV text (RFC 4180 quoting with the `csv` crate, CRLF or LF, a BOM, blank lines
/// ignored). An optional header row names the columns in English (`cyzen_user_id,email,action`)
/// or Japanese (`ユーザーID,メールアドレス,操作`), in any order; without one the columns are
/// `user,email[,action]`. Returns the rows and the lines that cannot be read as rows.
pub fn parse_csv(text: &str) -> (Vec<Row>, Vec<(usize, String)>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    let mut columns: Option<Columns> = None;
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = line_at(text, e.position().map_or(0, |p| p.byte()));
                bad.push((
                    line,
                    format!("not readable as CSV ({e}) / CSVとして読み取れません"),
                ));
                continue;
            }
        };
        let line = line_at(text, record.position().map_or(0, |p| p.byte()));
        let cells: Vec<&str> = record.iter().map(str::trim).collect();
        if cells.iter().all(|c| c.is_empty()) {
            continue;
        }
        let cols = match columns {
            Some(c) => c,
            None => {
                let found = header(&cells);
                columns = Some(found.unwrap_or(POSITIONAL));
                if found.is_some() {
                    continue;
                }
                POSITIONAL
            }
        };
        let needed = cols.user.max(cols.email) + 1;
        let fits = if cols.from_header {
            cells.len() >= needed
        } else {
            (2..=3).contains(&cells.len())
        };
        if !fits {
            bad.push((
                line,
                format!(
                    "expected cyzen_user_id,email[,action] (ユーザーID,メールアドレス[,操作]), got {} field(s) / 列の数が合いません",
                    cells.len()
                ),
            ));
            continue;
        }
        let cell = |i: usize| cells.get(i).copied().unwrap_or("");
        rows.push(Row {
            line,
            user_id: cell(cols.user).to_string(),
            email: cell(cols.email).to_string(),
            action: cols.action.map_or(Ok(Action::Link), |i| action(cell(i))),
        });
    }
    (rows, bad)
}

enum RowPlan {
    Done(Outcome, Option<Reason>),
    Check { relink: bool },
    Unlink,
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
        let unlinking: HashSet<&str> = rows
            .iter()
            .filter(|r| r.action == Ok(Action::Unlink))
            .map(|r| r.user_id.as_str())
            .collect();
        let by_address: HashMap<String, &LinkedUser> =
            existing.values().map(|u| (u.mailbox_key(), u)).collect();

        // Decide what each row needs, without Graph.
        let mut seen_users = HashSet::new();
        let mut seen_addresses = HashSet::new();
        let mut plans = Vec::with_capacity(rows.len());
        for r in &rows {
            let err = |code: &str, detail: Option<String>| {
                RowPlan::Done(
                    if opts.dry_run {
                        Outcome::Error
                    } else {
                        Outcome::Skipped
                    },
                    Some(Reason::new(code, detail)),
                )
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

        // One token first: broken credentials stop here, not once per row.
        let checks: Vec<usize> = (0..rows.len())
            .filter(|&i| matches!(plans[i], RowPlan::Check { .. }))
            .collect();
        if !checks.is_empty()
            && let Err(e) = self.graph.token(company, &creds).await
        {
            return Err(if e.is_retryable() {
                AdminError::Unavailable {
                    retry_after: e.wait_hint(),
                    message: e.to_string(),
                }
            } else {
                AdminError::Conflict {
                    code: "credentials_invalid",
                    message: format!("the company's credentials do not work: {e}"),
                }
            });
        }
        let total = rows.len();
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(total - checks.len()));
        progress(Progress {
            done: done.load(std::sync::atomic::Ordering::Relaxed),
            total,
        });
        let concurrency = self.cfg.admin.bulk_concurrency;
        let checked: HashMap<usize, MailboxCheck> =
            futures_util::stream::iter(checks.iter().copied())
                .map(|i| {
                    let (creds, done, progress) = (&creds, done.clone(), progress.clone());
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
                .buffer_unordered(concurrency)
                .collect()
                .await;

        let mut results = Vec::with_capacity(rows.len());
        let mut to_link = Vec::new();
        let mut to_unlink = Vec::new();
        for (i, (r, plan)) in rows.iter().zip(plans).enumerate() {
            let (outcome, reason) = match plan {
                RowPlan::Done(o, reason) => (o, reason),
                RowPlan::Unlink if opts.dry_run => (Outcome::WouldUnlink, None),
                RowPlan::Unlink => {
                    to_unlink.push(i);
                    (Outcome::Unlinked, None)
                }
                RowPlan::Check { relink } => match &checked[&i] {
                    MailboxCheck::Reachable => {
                        if !opts.dry_run {
                            to_link.push(i);
                        }
                        let o = match (opts.dry_run, relink) {
                            (true, false) => Outcome::WouldLink,
                            (true, true) => Outcome::WouldRelink,
                            (false, false) => Outcome::Linked,
                            (false, true) => Outcome::Relinked,
                        };
                        (o, None)
                    }
                    MailboxCheck::Problem { code, detail } => (
                        if opts.dry_run {
                            Outcome::Error
                        } else {
                            Outcome::Skipped
                        },
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
        for (line, message) in bad {
            results.push(RowResult {
                line,
                user_id: String::new(),
                email: String::new(),
                action: None,
                outcome: if opts.dry_run {
                    Outcome::Error
                } else {
                    Outcome::Skipped
                },
                reason: Some(Reason::new("malformed_row", Some(message))),
            });
        }

        if !opts.dry_run {
            // Unlinks first: an address may move from an unlinked user to a linked one.
            let unlinked: Vec<(usize, Result<(), AdminError>)> =
                futures_util::stream::iter(to_unlink)
                    .map(|i| {
                        let user = rows[i].user_id.clone();
                        async move {
                            let r = self
                                .unlink_user(
                                    company,
                                    &user,
                                    opts.delete_copies,
                                    super::service::no_progress(),
                                )
                                .await
                                .map(|_| ());
                            (i, r)
                        }
                    })
                    .buffer_unordered(concurrency)
                    .collect()
                    .await;
            for (i, r) in unlinked {
                if let Err(e) = r {
                    results[i].outcome = Outcome::Skipped;
                    results[i].reason = Some(Reason::new(e.code(), Some(e.to_string())));
                }
            }
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
        }

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
        progress(Progress { done: total, total });
        tracing::info!(company, dry_run = opts.dry_run, rows = results.len(), summary = ?summary, "admin: bulk file processed");
        Ok(BulkReport {
            dry_run: opts.dry_run,
            rows: results.len(),
            summary,
            reasons,
            results,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_with_quotes_crlf_bom_header_and_actions() {
        let text = "\u{feff}cyzen_user_id,email,action\r\nu-1,taro@a.com\r\n\r\n\"u-2\",\"o'neil, jr@a.com\",unlink\nu-3,\"x\"\"y@a.com\",LINK\nu-4,a@b.com,frobnicate\nonly-one-field\n";
        let (rows, bad) = parse_csv(text);
        let got: Vec<(usize, &str, &str, Result<Action, String>)> = rows
            .iter()
            .map(|r| {
                (
                    r.line,
                    r.user_id.as_str(),
                    r.email.as_str(),
                    r.action.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (2, "u-1", "taro@a.com", Ok(Action::Link)),
                (4, "u-2", "o'neil, jr@a.com", Ok(Action::Unlink)),
                (5, "u-3", "x\"y@a.com", Ok(Action::Link)),
                (6, "u-4", "a@b.com", Err("frobnicate".into())),
            ]
        );
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, 7);
    }

    #[test]
    fn a_japanese_header_names_the_columns_in_any_order_and_extra_columns_are_ignored() {
        let text = "氏名,メールアドレス,ユーザーＩＤ,操作\r\n山田 太郎,taro@a.com,u-1,\r\n鈴木 一郎,ichiro@a.com,u-2,解除\r\n佐藤,sato@a.com,u-3,消す\r\n";
        let (rows, bad) = parse_csv(text);
        assert!(bad.is_empty(), "{bad:?}");
        let got: Vec<(usize, &str, &str, Result<Action, String>)> = rows
            .iter()
            .map(|r| {
                (
                    r.line,
                    r.user_id.as_str(),
                    r.email.as_str(),
                    r.action.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (2, "u-1", "taro@a.com", Ok(Action::Link)),
                (3, "u-2", "ichiro@a.com", Ok(Action::Unlink)),
                (4, "u-3", "sato@a.com", Err("消す".into())),
            ]
        );
    }

    #[test]
    fn shift_jis_utf8_with_and_without_bom_and_utf16_decode_to_the_same_text() {
        let text = "ユーザーID,メールアドレス\r\nu-1,taro@a.com\r\n";
        let (sjis, _, unmappable) = encoding_rs::SHIFT_JIS.encode(text);
        assert!(!unmappable);
        assert!(
            std::str::from_utf8(&sjis).is_err(),
            "the sample is not UTF-8 too"
        );
        assert_eq!(decode_csv(&sjis).unwrap(), text);
        assert_eq!(decode_csv(text.as_bytes()).unwrap(), text);
        let bom = [b"\xef\xbb\xbf".as_slice(), text.as_bytes()].concat();
        assert_eq!(decode_csv(&bom).unwrap(), text);
        let mut utf16 = vec![0xff, 0xfe];
        utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(decode_csv(&utf16).unwrap(), text);
        // CP932's own characters (NEC special characters, IBM extensions).
        let (cp932, _, _) = encoding_rs::SHIFT_JIS.encode("①㈱髙");
        assert_eq!(decode_csv(&cp932).unwrap(), "①㈱髙");
        match decode_csv(b"u-1,\x82\xff\x82") {
            Err(AdminError::Invalid { code, .. }) => assert_eq!(code, "invalid_csv"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_without_header_starts_at_line_one() {
        let (rows, bad) = parse_csv("u-1,a@b.com");
        assert!(bad.is_empty());
        assert_eq!(rows[0].line, 1);
        assert_eq!(rows[0].action, Ok(Action::Link));
    }
}
