//! What went wrong talking to Graph or to the token endpoint, and what the caller should do about
//! it (GRAPH.md §1.3–§1.6, §2.10–§2.11, §3, §4; DESIGN.md §2 step 4).
//!
//! Classification branches on the HTTP status and Graph's `error.code` (Microsoft: "branch on
//! `code`, never on `message`"). The one exception is the Application Access Policy denial, which
//! shares `ErrorAccessDenied` with missing consent and differs only by the message
//! "Access to OData is disabled." (GRAPH.md §5).
//!
//! A [`GraphError`] never carries a secret or a token: it is built from response bodies and
//! transport errors only, and the client scrubs the company's secret and the bearer token out of
//! anything a server echoed back.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

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

/// Why the token endpoint refused the company's credentials (GRAPH.md §1.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenProblem {
    /// AADSTS7000215: the client secret is wrong (often the secret's ID instead of its value).
    InvalidSecret,
    /// AADSTS7000222: the client secret has expired.
    ExpiredSecret,
    /// AADSTS700016: the application is not in the tenant (never consented there).
    AppNotInTenant,
    /// AADSTS90002 / 900023 (or `invalid_tenant`): the tenant does not exist or is malformed.
    TenantNotFound,
    /// AADSTS70011 / 700022 / 700023 (or `invalid_scope`): the scope is not valid.
    InvalidScope,
    /// Anything else the token endpoint refused with (`error_codes[0]` and the OAuth `error`).
    Other { code: Option<u64>, error: String },
}

impl TokenProblem {
    /// A stable, machine-readable code (`invalid_secret`, `expired_secret`,
    /// `app_not_in_tenant`, `tenant_not_found`, `invalid_scope`, `other`).
    pub fn code(&self) -> &'static str {
        match self {
            TokenProblem::InvalidSecret => "invalid_secret",
            TokenProblem::ExpiredSecret => "expired_secret",
            TokenProblem::AppNotInTenant => "app_not_in_tenant",
            TokenProblem::TenantNotFound => "tenant_not_found",
            TokenProblem::InvalidScope => "invalid_scope",
            TokenProblem::Other { .. } => "other",
        }
    }

    /// One sentence for an administrator.
    pub fn description(&self) -> &'static str {
        match self {
            TokenProblem::InvalidSecret => {
                "The client secret is invalid (enter the secret's value, not its ID)."
            }
            TokenProblem::ExpiredSecret => {
                "The client secret has expired: create a new one in the Azure portal."
            }
            TokenProblem::AppNotInTenant => {
                "The application was not found in the tenant (wrong client ID or tenant, or no admin consent)."
            }
            TokenProblem::TenantNotFound => "The tenant ID does not exist.",
            TokenProblem::InvalidScope => "The token scope was refused.",
            TokenProblem::Other { .. } => "The token endpoint refused the credentials.",
        }
    }
}

impl fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenProblem::Other {
                code: Some(code), ..
            } => write!(f, "other (AADSTS{code})"),
            TokenProblem::Other { code: None, error } => write!(f, "other ({error})"),
            p => f.write_str(p.code()),
        }
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

/// OAuth `error` values (and this module's own token-endpoint codes), to tell token-endpoint
/// errors apart from Graph errors in `Display`.
const OAUTH_ERRORS: &[&str] = &[
    "invalid_request",
    "invalid_grant",
    "unauthorized_client",
    "invalid_client",
    "unsupported_grant_type",
    "invalid_resource",
    "interaction_required",
    "temporarily_unavailable",
    "invalid_scope",
    "invalid_tenant",
    "access_denied",
    "server_error",
    "token_endpoint_error",
    "invalid_token_response",
];

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

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `innerError` (or `innererror`) of an error envelope.
fn inner_error(error: &Value) -> Option<&Value> {
    error
        .get("innerError")
        .or_else(|| error.get("innererror"))
        .filter(|v| v.is_object())
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

/// A `Value` that may be a JSON number or a numeric string, as `u64`.
fn as_u64_lenient(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl GraphError {
    /// Classifies a non-2xx Graph response (an outer response or a `$batch` item). `headers`
    /// names are matched case-insensitively.
    pub fn from_response(status: u16, headers: &[(String, String)], body: &Value) -> GraphError {
        Self::from_response_at(status, headers, body, jiff::Timestamp::now())
    }

    /// [`GraphError::from_response`] with an explicit "now" for an HTTP-date `Retry-After`.
    pub fn from_response_at(
        status: u16,
        headers: &[(String, String)],
        body: &Value,
        now: jiff::Timestamp,
    ) -> GraphError {
        let error = body.get("error").filter(|e| e.is_object());
        let code = error
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("Http{status}"));
        let message = match error.and_then(|e| e.get("message")) {
            Some(Value::String(m)) => first_line(m),
            // OData v3 shape: {"message":{"lang":"en","value":"..."}}
            Some(Value::Object(m)) => m
                .get("value")
                .and_then(Value::as_str)
                .map(first_line)
                .unwrap_or_default(),
            _ => match body {
                Value::String(text) => first_line(text),
                _ => String::new(),
            },
        };
        let request_id = header(headers, "request-id")
            .map(str::to_string)
            .or_else(|| {
                error
                    .and_then(inner_error)
                    .and_then(|i| i.get("request-id"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .filter(|s| !s.is_empty());
        let retry_after = header(headers, "retry-after").and_then(|v| parse_retry_after(v, now));
        let class = classify(status, &code, &message, retry_after);
        GraphError {
            status: Some(status),
            code,
            message,
            request_id,
            retry_after,
            aadsts: None,
            class,
        }
    }

    /// Classifies a token-endpoint failure (any status but a usable 200). The body is
    /// Microsoft's `{"error","error_description","error_codes":[..],"trace_id",..}`; anything
    /// else is tolerated.
    pub fn from_token_response(status: u16, body: &Value) -> GraphError {
        let error = body
            .get("error")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty());
        let description = body
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or("");
        let aadsts = body
            .get("error_codes")
            .and_then(Value::as_array)
            .and_then(|codes| codes.first())
            .and_then(as_u64_lenient)
            .or_else(|| aadsts_in(description));
        let request_id = body
            .get("trace_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let mut message = first_line(description);
        if message.is_empty()
            && let Value::String(text) = body
        {
            message = first_line(text);
        }
        let code = match error {
            Some(e) => e.to_string(),
            None if (200..300).contains(&status) => "invalid_token_response".to_string(),
            None => "token_endpoint_error".to_string(),
        };
        if message.is_empty() && error.is_none() {
            message = if (200..300).contains(&status) {
                "the token endpoint's answer has no access_token".to_string()
            } else {
                format!("the token endpoint answered HTTP {status} without an OAuth error")
            };
        }
        let class = classify_token(status, error, aadsts);
        GraphError {
            status: Some(status),
            code,
            message,
            request_id,
            retry_after: None,
            aadsts,
            class,
        }
    }

    /// A transport failure (connection refused, reset, DNS, TLS, timeout): retryable, except
    /// for errors building the request (a bad URL), which are permanent.
    pub fn connection(e: &reqwest::Error) -> GraphError {
        let code = if e.is_timeout() {
            "Timeout"
        } else {
            "ConnectionError"
        };
        // The source chain, without the URL (it may carry query strings nobody needs in logs).
        let mut parts: Vec<String> = Vec::new();
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
        while let Some(s) = source {
            let text = s.to_string();
            if !parts.iter().any(|p| p.contains(&text)) {
                parts.push(text);
            }
            source = s.source();
        }
        let kind = if e.is_timeout() {
            "request timed out"
        } else if e.is_connect() {
            "could not connect"
        } else if e.is_body() || e.is_decode() {
            "reading the response failed"
        } else if e.is_builder() {
            "invalid request"
        } else if e.is_redirect() {
            "unexpected redirect"
        } else {
            "request failed"
        };
        let message = if parts.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}: {}", parts.join(": "))
        };
        let class = if e.is_builder() || e.is_redirect() {
            ErrorClass::Permanent
        } else {
            ErrorClass::Retryable { after: None }
        };
        GraphError {
            status: None,
            code: code.to_string(),
            message: truncate(&message, 1000),
            request_id: None,
            retry_after: None,
            aadsts: None,
            class,
        }
    }

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

/// The AADSTS number at the start of an `error_description` ("AADSTS7000215: ...").
fn aadsts_in(description: &str) -> Option<u64> {
    let rest = description.trim_start().strip_prefix("AADSTS")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn classify(status: u16, code: &str, message: &str, retry_after: Option<Duration>) -> ErrorClass {
    let retry = ErrorClass::Retryable { after: retry_after };
    match status {
        401 => return ErrorClass::RefreshToken,
        // 424: a `$batch` item whose dependency failed (or an old-style throttled batch).
        408 | 424 | 429 | 500 | 502 | 503 | 504 => return retry,
        _ => {}
    }
    if !(400..500).contains(&status) {
        return ErrorClass::Permanent;
    }
    let is = |c: &str| code.eq_ignore_ascii_case(c);
    if status == 403 || is("ErrorAccessDenied") || is("Authorization_RequestDenied") {
        if message.contains("Access to OData is disabled") {
            return ErrorClass::Mailbox(MailboxProblem::PolicyDenied);
        }
        if is("ErrorAccessDenied") || is("Authorization_RequestDenied") || is("AccessDenied") {
            return ErrorClass::Mailbox(MailboxProblem::AccessDenied);
        }
        return ErrorClass::Permanent;
    }
    if is("ErrorItemNotFound") || (status == 404 && is("itemNotFound")) {
        return ErrorClass::ItemGone;
    }
    if is("ErrorInvalidUser") || is("Request_ResourceNotFound") || is("ErrorNonExistentMailbox") {
        return ErrorClass::Mailbox(MailboxProblem::UnknownUser);
    }
    if is("MailboxNotEnabledForRESTAPI") || (status == 404 && is("ResourceNotFound")) {
        return ErrorClass::Mailbox(MailboxProblem::NoMailbox);
    }
    ErrorClass::Permanent
}

fn classify_token(status: u16, error: Option<&str>, aadsts: Option<u64>) -> ErrorClass {
    let retry = ErrorClass::Retryable { after: None };
    match aadsts {
        Some(7000215) => return ErrorClass::Credentials(TokenProblem::InvalidSecret),
        Some(7000222) => return ErrorClass::Credentials(TokenProblem::ExpiredSecret),
        Some(700016) => return ErrorClass::Credentials(TokenProblem::AppNotInTenant),
        Some(90002 | 900023) => return ErrorClass::Credentials(TokenProblem::TenantNotFound),
        Some(70011 | 700022 | 700023) => {
            return ErrorClass::Credentials(TokenProblem::InvalidScope);
        }
        // Tenant throttling, transient, temporarily unavailable.
        Some(90055 | 90024 | 90006) => return retry,
        _ => {}
    }
    match error {
        Some("temporarily_unavailable" | "server_error") => return retry,
        Some("invalid_tenant") => return ErrorClass::Credentials(TokenProblem::TenantNotFound),
        Some("invalid_scope") => return ErrorClass::Credentials(TokenProblem::InvalidScope),
        _ => {}
    }
    if status == 408 || status == 429 || status >= 500 || (200..300).contains(&status) {
        // 5xx, throttling, or a 2xx without a usable token: transient (or a proxy in the way).
        return retry;
    }
    ErrorClass::Credentials(TokenProblem::Other {
        code: aadsts,
        error: error
            .map(str::to_string)
            .unwrap_or_else(|| format!("http_{status}")),
    })
}

/// `Retry-After` as decimal seconds (`"10"`, `"2.128"`) or an HTTP-date; `None` if absent or
/// unparsable; a negative number or a date in the past gives zero.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if let Some(d) = parse_decimal_seconds(v) {
        return Some(d);
    }
    let at = parse_http_date(v)?;
    let secs = at.as_nanosecond() - now.as_nanosecond();
    if secs <= 0 {
        return Some(Duration::ZERO);
    }
    Some(Duration::from_nanos(u64::try_from(secs).ok()?))
}

/// `[+-]digits[.digits]`, exactly (no float rounding, no exponent, no `inf`/`NaN`).
fn parse_decimal_seconds(v: &str) -> Option<Duration> {
    let (negative, rest) = match v.as_bytes().first()? {
        b'-' => (true, &v[1..]),
        b'+' => (false, &v[1..]),
        _ => (false, v),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((i, f)) => (i, f),
        None => (rest, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if negative {
        return Some(Duration::ZERO);
    }
    let secs: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut nanos: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(Duration::new(secs, nanos))
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`)
/// or asctime (`Sun Nov  6 08:49:37 1994`), RFC 9110 §5.6.7.
fn parse_http_date(v: &str) -> Option<jiff::Timestamp> {
    static RFC2822: jiff::fmt::rfc2822::DateTimeParser = jiff::fmt::rfc2822::DateTimeParser::new();
    if let Ok(ts) = RFC2822.parse_timestamp(v) {
        return Some(ts);
    }
    let utc = |format: &str, input: &str| {
        jiff::fmt::strtime::parse(format, format!("{input} +0000"))
            .ok()?
            .to_timestamp()
            .ok()
    };
    if let Some(rest) = v.strip_suffix(" GMT")
        && let Some(ts) = utc("%A, %d-%b-%y %H:%M:%S %z", rest)
    {
        return Some(ts);
    }
    // asctime pads the day with a space; normalise runs of spaces for the parser.
    let collapsed = v.split_whitespace().collect::<Vec<_>>().join(" ");
    utc("%a %b %d %H:%M:%S %Y %z", &collapsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn graph_body(code: &str, message: &str) -> Value {
        json!({"error": {"code": code, "message": message, "innerError": {
            "date": "2021-08-23T06:12:16",
            "request-id": "inner-rid",
            "client-request-id": "91a6d4c4-0000-0000-0000-000000000000"
        }}})
    }

    fn check(
        status: u16,
        headers: &[(&str, &str)],
        body: Value,
        expected: ErrorClass,
    ) -> GraphError {
        let e = GraphError::from_response(status, &h(headers), &body);
        assert_eq!(e.class, expected, "status {status} body {body}");
        assert_eq!(e.status, Some(status));
        e
    }

    fn retry(secs: Option<f64>) -> ErrorClass {
        ErrorClass::Retryable {
            after: secs.map(Duration::from_secs_f64),
        }
    }

    #[test]
    fn every_graph_status_and_code_maps_to_its_class() {
        use MailboxProblem::*;
        type Case<'a> = (u16, Vec<(&'a str, &'a str)>, Value, ErrorClass);
        let cases: Vec<Case> = vec![
            (
                429,
                vec![("retry-after", "10")],
                graph_body("TooManyRequests", "Please retry again later."),
                retry(Some(10.0)),
            ),
            (
                429,
                vec![("Retry-After", "2.128")],
                json!({"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}),
                ErrorClass::Retryable {
                    after: Some(Duration::new(2, 128_000_000)),
                },
            ),
            (429, vec![], graph_body("TooManyRequests", ""), retry(None)),
            (
                503,
                vec![("retry-after", "5")],
                graph_body("serviceNotAvailable", "x"),
                retry(Some(5.0)),
            ),
            (503, vec![], Value::Null, retry(None)),
            (504, vec![], graph_body("GatewayTimeout", "x"), retry(None)),
            (
                500,
                vec![],
                graph_body("generalException", "x"),
                retry(None),
            ),
            (
                502,
                vec![],
                Value::String("<html>Bad gateway</html>".into()),
                retry(None),
            ),
            (
                401,
                vec![],
                graph_body(
                    "InvalidAuthenticationToken",
                    "Access token has expired or is not yet valid.",
                ),
                ErrorClass::RefreshToken,
            ),
            (
                404,
                vec![],
                graph_body(
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                ),
                ErrorClass::ItemGone,
            ),
            (
                404,
                vec![],
                graph_body("ErrorInvalidUser", "The requested user 'x@y' is invalid."),
                ErrorClass::Mailbox(UnknownUser),
            ),
            (
                404,
                vec![],
                graph_body(
                    "Request_ResourceNotFound",
                    "Resource 'x' does not exist or one of its queried reference-property objects are not present.",
                ),
                ErrorClass::Mailbox(UnknownUser),
            ),
            (
                404,
                vec![],
                graph_body(
                    "MailboxNotEnabledForRESTAPI",
                    "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
                ),
                ErrorClass::Mailbox(NoMailbox),
            ),
            (
                404,
                vec![],
                graph_body("ResourceNotFound", "Resource could not be discovered."),
                ErrorClass::Mailbox(NoMailbox),
            ),
            (
                403,
                vec![],
                graph_body("ErrorAccessDenied", "Access to OData is disabled."),
                ErrorClass::Mailbox(PolicyDenied),
            ),
            (
                403,
                vec![],
                graph_body(
                    "ExtensionError",
                    "Operation: Create; Exception: [Status Code: Forbidden; Reason: Access to OData is disabled.]",
                ),
                ErrorClass::Mailbox(PolicyDenied),
            ),
            (
                403,
                vec![],
                graph_body(
                    "ErrorAccessDenied",
                    "Access is denied. Check credentials and try again.",
                ),
                ErrorClass::Mailbox(AccessDenied),
            ),
            (
                403,
                vec![],
                graph_body(
                    "Authorization_RequestDenied",
                    "Insufficient privileges to complete the operation.",
                ),
                ErrorClass::Mailbox(AccessDenied),
            ),
            (
                403,
                vec![],
                graph_body(
                    "AccessDenied",
                    "Either scp or roles claim need to be present in the token.",
                ),
                ErrorClass::Mailbox(AccessDenied),
            ),
            (
                403,
                vec![],
                graph_body("ErrorSomethingElse", "x"),
                ErrorClass::Permanent,
            ),
            (
                400,
                vec![],
                graph_body(
                    "TimeZoneNotSupportedException",
                    "A valid TimeZone value must be specified. The following TimeZone value is not supported: 'X'.",
                ),
                ErrorClass::Permanent,
            ),
            (
                400,
                vec![],
                graph_body(
                    "ErrorPropertyValidationFailure",
                    "At least one property failed validation.",
                ),
                ErrorClass::Permanent,
            ),
            (
                400,
                vec![],
                graph_body("ErrorInvalidIdMalformed", "Id is malformed."),
                ErrorClass::Permanent,
            ),
            (
                400,
                vec![],
                graph_body("BadRequest", "x"),
                ErrorClass::Permanent,
            ),
            (
                409,
                vec![],
                graph_body("ErrorIrresolvableConflict", "x"),
                ErrorClass::Permanent,
            ),
            (
                412,
                vec![],
                graph_body("ErrorIrresolvableConflict", "x"),
                ErrorClass::Permanent,
            ),
            (405, vec![], Value::Null, ErrorClass::Permanent),
            (404, vec![], Value::Null, ErrorClass::Permanent),
            (501, vec![], Value::Null, ErrorClass::Permanent),
            (
                424,
                vec![],
                graph_body("FailedDependency", "x"),
                retry(None),
            ),
        ];
        for (status, headers, body, class) in cases {
            check(status, &headers, body, class);
        }
    }

    #[test]
    fn a_graph_error_carries_code_message_request_id_and_retry_after() {
        let e = check(
            429,
            &[("request-id", "hdr-rid"), ("retry-after", "2.5")],
            json!({"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}),
            ErrorClass::Retryable {
                after: Some(Duration::from_millis(2500)),
            },
        );
        assert_eq!(e.code, "ApplicationThrottled");
        assert_eq!(
            e.message,
            "Application is over its MailboxConcurrency limit."
        );
        assert_eq!(e.request_id.as_deref(), Some("hdr-rid"));
        assert_eq!(e.retry_after, Some(Duration::from_millis(2500)));
        assert!(e.is_retryable());
        assert_eq!(
            e.to_string(),
            "Graph 429 ApplicationThrottled: Application is over its MailboxConcurrency limit. (request-id hdr-rid)"
        );

        // Without the header, the innerError's request-id is used.
        let e = check(
            404,
            &[],
            graph_body(
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            ),
            ErrorClass::ItemGone,
        );
        assert_eq!(e.request_id.as_deref(), Some("inner-rid"));
        assert!(!e.is_retryable());

        // A body with no error object: the code names the status.
        let e = check(502, &[], Value::Null, retry(None));
        assert_eq!(e.code, "Http502");
        assert_eq!(e.to_string(), "Graph 502 Http502");
    }

    #[test]
    fn retry_after_parses_decimal_seconds_and_http_dates() {
        let now: jiff::Timestamp = "2024-03-01T12:00:00Z".parse().unwrap();
        let p = |v: &str| parse_retry_after(v, now);
        assert_eq!(p("10"), Some(Duration::from_secs(10)));
        assert_eq!(p("2.128"), Some(Duration::new(2, 128_000_000)));
        assert_eq!(p(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(p(".25"), Some(Duration::from_millis(250)));
        assert_eq!(p("3."), Some(Duration::from_secs(3)));
        assert_eq!(p("0"), Some(Duration::ZERO));
        assert_eq!(p("-1"), Some(Duration::ZERO));
        assert_eq!(p("-0.5"), Some(Duration::ZERO));
        assert_eq!(p("1.0000000001"), Some(Duration::from_secs(1)));
        assert_eq!(
            p("Fri, 01 Mar 2024 12:00:30 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            p("Friday, 01-Mar-24 12:01:00 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(p("Fri Mar  1 12:00:07 2024"), Some(Duration::from_secs(7)));
        assert_eq!(p("Fri, 01 Mar 2024 11:00:00 GMT"), Some(Duration::ZERO));
        for garbage in [
            "",
            " ",
            "soon",
            "1e3",
            "inf",
            "NaN",
            "1.2.3",
            "-",
            ".",
            "10s",
            "0x10",
            "99999999999999999999999",
        ] {
            assert_eq!(p(garbage), None, "{garbage:?}");
        }
    }

    /// Microsoft's exact token error body (GRAPH.md §1.3).
    fn aad(error: &str, code: u64, text: &str) -> Value {
        json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {text}\r\nTrace ID: 0000aaaa-11bb-cc22-dd33-444444eeeeee\r\nCorrelation ID: aaaa0000-bb11-2222-33cc-444444dddddd\r\nTimestamp: 2016-01-09 02:02:12Z"
            ),
            "error_codes": [code],
            "timestamp": "2016-01-09 02:02:12Z",
            "trace_id": "0000aaaa-11bb-cc22-dd33-444444eeeeee",
            "correlation_id": "aaaa0000-bb11-2222-33cc-444444dddddd",
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}")
        })
    }

    #[test]
    fn every_aadsts_code_maps_to_its_token_problem() {
        use TokenProblem::*;
        let creds = ErrorClass::Credentials;
        let cases: Vec<(u16, &str, u64, &str, ErrorClass)> = vec![
            (
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '11111111-2222-3333-4444-555555555555'.",
                creds(InvalidSecret),
            ),
            (
                401,
                "invalid_client",
                7000222,
                "The provided client secret keys for app '11111111-2222-3333-4444-555555555555' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                creds(ExpiredSecret),
            ),
            (
                400,
                "unauthorized_client",
                700016,
                "Application with identifier '11111111-2222-3333-4444-555555555555' was not found in the directory 'contoso.onmicrosoft.com'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                creds(AppNotInTenant),
            ),
            (
                400,
                "invalid_tenant",
                90002,
                "Tenant 'nope.onmicrosoft.com' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.",
                creds(TenantNotFound),
            ),
            (
                400,
                "invalid_request",
                90002,
                "Tenant 'x' not found.",
                creds(TenantNotFound),
            ),
            (
                400,
                "invalid_request",
                900023,
                "Specified tenant identifier 'bad tenant' is neither a valid DNS name, nor a valid external domain.",
                creds(TenantNotFound),
            ),
            (
                400,
                "invalid_scope",
                70011,
                "The provided value for the input parameter 'scope' isn't valid.",
                creds(InvalidScope),
            ),
            (
                400,
                "invalid_scope",
                700022,
                "The provided value for the input parameter scope isn't valid because it contains more than one resource.",
                creds(InvalidScope),
            ),
            (
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                creds(Other {
                    code: Some(7000218),
                    error: "invalid_client".into(),
                }),
            ),
            (
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
                creds(Other {
                    code: Some(900144),
                    error: "invalid_request".into(),
                }),
            ),
            (
                400,
                "unauthorized_client",
                7000112,
                "Application is disabled.",
                creds(Other {
                    code: Some(7000112),
                    error: "unauthorized_client".into(),
                }),
            ),
            (
                400,
                "invalid_resource",
                500011,
                "The resource principal named https://graph.microsoft.com was not found in the tenant.",
                creds(Other {
                    code: Some(500011),
                    error: "invalid_resource".into(),
                }),
            ),
            (
                400,
                "invalid_grant",
                53003,
                "Access has been blocked by Conditional Access policies.",
                creds(Other {
                    code: Some(53003),
                    error: "invalid_grant".into(),
                }),
            ),
            (
                400,
                "invalid_grant",
                90094,
                "Admin consent is required.",
                creds(Other {
                    code: Some(90094),
                    error: "invalid_grant".into(),
                }),
            ),
            (
                400,
                "invalid_client",
                650056,
                "Misconfigured application.",
                creds(Other {
                    code: Some(650056),
                    error: "invalid_client".into(),
                }),
            ),
            (
                429,
                "temporarily_unavailable",
                90055,
                "The request is throttled.",
                retry(None),
            ),
            (
                400,
                "invalid_request",
                90024,
                "Transient error.",
                retry(None),
            ),
            (
                503,
                "temporarily_unavailable",
                90006,
                "The service is temporarily unavailable.",
                retry(None),
            ),
            (
                503,
                "temporarily_unavailable",
                12345,
                "Something.",
                retry(None),
            ),
            (500, "server_error", 12346, "Something.", retry(None)),
        ];
        for (status, error, code, text, class) in cases {
            let e = GraphError::from_token_response(status, &aad(error, code, text));
            assert_eq!(e.class, class, "AADSTS{code}");
            assert_eq!(e.status, Some(status));
            assert_eq!(e.aadsts, Some(code));
            assert_eq!(e.code, error);
            assert_eq!(
                e.message,
                format!("AADSTS{code}: {text}"),
                "first line only"
            );
            assert_eq!(
                e.request_id.as_deref(),
                Some("0000aaaa-11bb-cc22-dd33-444444eeeeee")
            );
            assert!(!e.to_string().contains("Correlation ID"));
            assert!(
                e.to_string()
                    .starts_with(&format!("token endpoint {status} {error}: AADSTS{code}")),
                "{e}"
            );
        }
    }

    #[test]
    fn token_problems_have_stable_codes() {
        let cases = [
            (TokenProblem::InvalidSecret, "invalid_secret"),
            (TokenProblem::ExpiredSecret, "expired_secret"),
            (TokenProblem::AppNotInTenant, "app_not_in_tenant"),
            (TokenProblem::TenantNotFound, "tenant_not_found"),
            (TokenProblem::InvalidScope, "invalid_scope"),
            (
                TokenProblem::Other {
                    code: Some(1),
                    error: "x".into(),
                },
                "other",
            ),
        ];
        for (p, code) in cases {
            assert_eq!(p.code(), code);
            assert!(!p.description().is_empty());
        }
        let cases = [
            (MailboxProblem::UnknownUser, "unknown_user"),
            (MailboxProblem::NoMailbox, "no_mailbox"),
            (MailboxProblem::PolicyDenied, "policy_denied"),
            (MailboxProblem::AccessDenied, "access_denied"),
        ];
        for (p, code) in cases {
            assert_eq!(p.code(), code);
            assert_eq!(p.to_string(), code);
            assert!(!p.description().is_empty());
        }
    }

    #[test]
    fn token_errors_without_microsofts_body_are_still_classified() {
        // AADSTS only in the description, error_codes as strings.
        let e = GraphError::from_token_response(
            401,
            &json!({"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}),
        );
        assert_eq!(e.aadsts, Some(7000215));
        assert_eq!(
            e.class,
            ErrorClass::Credentials(TokenProblem::InvalidSecret)
        );
        let e = GraphError::from_token_response(
            400,
            &json!({"error":"invalid_client","error_codes":["7000222"]}),
        );
        assert_eq!(
            e.class,
            ErrorClass::Credentials(TokenProblem::ExpiredSecret)
        );
        // A proxy's HTML 502 / an empty 503: retry.
        let e = GraphError::from_token_response(502, &Value::String("<html>bad</html>".into()));
        assert!(e.is_retryable());
        assert_eq!(e.code, "token_endpoint_error");
        assert!(e.to_string().starts_with("token endpoint 502"), "{e}");
        assert!(GraphError::from_token_response(503, &Value::Null).is_retryable());
        // A 404 (wrong login_url): the credentials/configuration need an admin.
        let e = GraphError::from_token_response(404, &Value::Null);
        assert_eq!(
            e.class,
            ErrorClass::Credentials(TokenProblem::Other {
                code: None,
                error: "http_404".into()
            })
        );
        // OAuth error names without a code.
        let e = GraphError::from_token_response(400, &json!({"error":"invalid_tenant"}));
        assert_eq!(
            e.class,
            ErrorClass::Credentials(TokenProblem::TenantNotFound)
        );
        let e = GraphError::from_token_response(400, &json!({"error":"invalid_scope"}));
        assert_eq!(e.class, ErrorClass::Credentials(TokenProblem::InvalidScope));
        // A 200 without access_token.
        assert!(
            GraphError::from_token_response(200, &json!({"token_type":"Bearer"})).is_retryable()
        );
    }

    #[test]
    fn redact_removes_an_echoed_secret() {
        let mut e = GraphError::from_token_response(
            401,
            &json!({"error":"invalid_client","error_description":"AADSTS7000215: secret 'hunter2-secret' is wrong","error_codes":[7000215]}),
        );
        e.redact("hunter2-secret");
        assert!(!format!("{e} {e:?}").contains("hunter2"));
        assert!(e.message.contains("***"));
    }

    #[test]
    fn transport_errors_are_retryable() {
        let e = GraphError::local(
            "MissingBatchResponse",
            "no answer",
            ErrorClass::Retryable { after: None },
        );
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "Graph MissingBatchResponse: no answer");
    }
}
