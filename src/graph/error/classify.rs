//! Graph's answers (an outer response or a `$batch` item) and transport failures, classified.
//!
//! Classification branches on the HTTP status and Graph's `error.code` (Microsoft: "branch on
//! `code`, never on `message`"). The one exception is the Application Access Policy denial, which
//! shares `ErrorAccessDenied` with missing consent and differs only by the message
//! "Access to OData is disabled." (GRAPH.md §5).

use std::time::Duration;

use serde_json::Value;

use super::{ErrorClass, GraphError, MailboxProblem, first_line, parse_retry_after, truncate};

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
