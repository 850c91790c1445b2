//! What went wrong talking to Graph or to the token endpoint, and what the caller should do about
//! it (GRAPH.md §1.3–§1.6, §2.10–§2.11, §3, §4; DESIGN.md §2 step 4): the classes and the error
//! here; Graph's answers and transport failures classified in `classify`, the token endpoint's
//! in `token`; `Retry-After` read in `retry_after`.
//!
//! A [`GraphError`] never carries a secret or a token: it is built from response bodies and
//! transport errors only, and the client scrubs the company's secret and the bearer token out of
//! anything a server echoed back.

mod classify;
mod retry_after;
#[cfg(test)]
mod tests;
mod token;

use std::fmt;
use std::time::Duration;

pub use self::retry_after::parse_retry_after;
use self::token::OAUTH_ERRORS;
pub use self::token::TokenProblem;

/// What the caller should do about a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorClass {
    /// 429, 503, 504, 500, 502 (also 408 and a `$batch` item's 424), connection error, timeout:
    /// wait (`Retry-After` if given, else backoff) and retry.
    Retryable { after: Option<Duration> },
    /// 401 from Graph (`InvalidAuthenticationToken`): get a new token once, then retry.
    RefreshToken,
    /// 404 `ErrorItemNotFound` (the Outlook event is gone): on DELETE that means done; on PATCH
    /// the caller recreates.
    ItemGone,
    /// The mailbox cannot be written.
    Mailbox(MailboxProblem),
    /// The company's credentials are wrong (the token endpoint said so): never retried until an
    /// admin fixes them.
    Credentials(TokenProblem),
    /// Anything else the request itself got wrong (400 validation, 409, 412, …): dead-letter at
    /// once.
    Permanent,
}

/// Why a mailbox cannot be written (the linked user shows "auth failed" with this reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailboxProblem {
    /// 404 `ErrorInvalidUser` / `Request_ResourceNotFound` / `ErrorNonExistentMailbox`: the
    /// address is not a user of the tenant.
    UnknownUser,
    /// 404 `MailboxNotEnabledForRESTAPI` (or `ResourceNotFound`): the user has no Exchange Online
    /// mailbox (no licence, guest, soft-deleted, on-premises).
    NoMailbox,
    /// 403 "Access to OData is disabled.": an Application Access Policy (or RBAC for
    /// Applications) keeps the app out of this mailbox.
    PolicyDenied,
    /// Any other 403 `ErrorAccessDenied` / `Authorization_RequestDenied` / `AccessDenied`:
    /// missing admin consent or application role.
    AccessDenied,
}

impl MailboxProblem {
    /// A stable, machine-readable code (`unknown_user`, `no_mailbox`, `policy_denied`,
    /// `access_denied`).
    pub fn code(&self) -> &'static str {
        match self {
            MailboxProblem::UnknownUser => "unknown_user",
            MailboxProblem::NoMailbox => "no_mailbox",
            MailboxProblem::PolicyDenied => "policy_denied",
            MailboxProblem::AccessDenied => "access_denied",
        }
    }

    /// One sentence for an administrator.
    pub fn description(&self) -> &'static str {
        match self {
            MailboxProblem::UnknownUser => "The address is not a user of the Microsoft tenant.",
            MailboxProblem::NoMailbox => {
                "The user has no Exchange Online mailbox (no licence, inactive, or on-premises)."
            }
            MailboxProblem::PolicyDenied => {
                "An application access policy denies the app access to this mailbox."
            }
            MailboxProblem::AccessDenied => {
                "Access denied: the app lacks the Calendars.ReadWrite application permission or admin consent."
            }
        }
    }
}

impl fmt::Display for MailboxProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A failed Graph or token-endpoint call, classified.
///
/// Display: `Graph 429 ApplicationThrottled: Application is over its MailboxConcurrency limit.
/// (request-id 1234)`, or `token endpoint 401 invalid_client: AADSTS7000215: Invalid client
/// secret provided. … (trace-id …)`, or `Graph Timeout: …` for transport failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct GraphError {
    /// HTTP status; `None` for connection errors and timeouts.
    pub status: Option<u16>,
    /// Graph's `error.code`, or the OAuth `error`, or `ConnectionError` / `Timeout` /
    /// `Http{status}` when the body carried none.
    pub code: String,
    /// Graph's `error.message`, or the first line of `error_description`.
    pub message: String,
    /// The `request-id` header or `innerError.request-id`; the token endpoint's `trace_id`.
    pub request_id: Option<String>,
    /// `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    /// `error_codes[0]` from the token endpoint.
    pub aadsts: Option<u64>,
    pub class: ErrorClass,
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token_endpoint = self.aadsts.is_some()
            || matches!(self.class, ErrorClass::Credentials(_))
            || OAUTH_ERRORS.contains(&self.code.as_str());
        f.write_str(if token_endpoint {
            "token endpoint"
        } else {
            "Graph"
        })?;
        if let Some(status) = self.status {
            write!(f, " {status}")?;
        }
        write!(f, " {}", self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(id) = &self.request_id {
            let label = if token_endpoint {
                "trace-id"
            } else {
                "request-id"
            };
            write!(f, " ({label} {id})")?;
        }
        Ok(())
    }
}

impl GraphError {
    /// A client-side failure with no HTTP status (e.g. a `$batch` answer lacking an item).
    pub fn local(code: &str, message: impl Into<String>, class: ErrorClass) -> GraphError {
        GraphError {
            status: None,
            code: code.to_string(),
            message: message.into(),
            request_id: None,
            retry_after: None,
            aadsts: None,
            class,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self.class, ErrorClass::Retryable { .. })
    }

    /// How long to wait before retrying: the class's `Retry-After`, if any.
    pub fn wait_hint(&self) -> Option<Duration> {
        match self.class {
            ErrorClass::Retryable { after } => after.or(self.retry_after),
            _ => None,
        }
    }

    /// Replaces every occurrence of `needle` (a secret or token a server echoed back) with
    /// `***` in the code and message. Needles shorter than 4 characters are ignored.
    pub fn redact(&mut self, needle: &str) {
        if needle.len() < 4 {
            return;
        }
        for field in [&mut self.code, &mut self.message] {
            if field.contains(needle) {
                *field = field.replace(needle, "***");
            }
        }
        if let Some(id) = &mut self.request_id
            && id.contains(needle)
        {
            *id = id.replace(needle, "***");
        }
    }
}

/// First line of a text, trimmed, at most ~1,000 characters.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    truncate(line, 1000)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
